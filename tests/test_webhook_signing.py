import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core.webhooks import headers, new_secret, secret_key, sign

BODY = b'{"type":"job.succeeded","data":{"id":"job_1"}}'


def test_new_secret_is_32_random_bytes_behind_the_prefix() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    sent = headers([secret], "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, sent) == {"type": "job.succeeded", "data": {"id": "job_1"}}
    assert sent["content-type"] == "application/json"
    assert sent["webhook-id"] == "msg_1"


def test_sign_matches_the_specification_example() -> None:
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_tampered_body_fails() -> None:
    secret = new_secret()
    sent = headers([secret], "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"succeeded", b"failed"), sent)


def test_old_timestamp_fails() -> None:
    secret = new_secret()
    sent = headers([secret], "msg_1", int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, sent)


def test_wrong_secret_fails() -> None:
    sent = headers([new_secret()], "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, sent)


def test_rotation_signs_with_every_secret() -> None:
    old, new = new_secret(), new_secret()
    sent = headers([old, new], "msg_1", int(time.time()), BODY)
    assert len(sent["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, sent)
    Webhook(new).verify(BODY, sent)


@pytest.mark.parametrize(
    ("secret", "rule"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "standard base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes, not 5"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "24 to 64 bytes, not 65"),
    ],
)
def test_malformed_secrets_are_refused(secret: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        secret_key(secret)
    with pytest.raises(ValueError, match=rule):
        sign(secret, "msg_1", 1, BODY)


def test_headers_need_at_least_one_secret() -> None:
    with pytest.raises(ValueError, match="non-empty sequence"):
        headers([], "msg_1", 1, BODY)
    with pytest.raises(ValueError, match="non-empty sequence"):
        headers(new_secret(), "msg_1", 1, BODY)


@pytest.mark.parametrize(("msg_id", "timestamp"), [("", 1), ("msg\r\nx-evil: 1", 1), ("msg_1", -1), ("msg_1", True)])
def test_malformed_id_or_timestamp_is_refused(msg_id: str, timestamp: int) -> None:
    with pytest.raises(ValueError, match=r"webhook (message id|timestamp)"):
        sign(new_secret(), msg_id, timestamp, BODY)
