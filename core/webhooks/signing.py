"""Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from secrets import token_bytes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.db import ApiKey

SECRET_PREFIX = "whsec_"
# The Standard Webhooks specification asks for secrets of 24 to 64 bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode("ascii")


def signing_secrets(key: ApiKey, now: datetime) -> list[str]:
    """The secrets a delivery is signed with now: the key's current one, and the previous one within the
    grace period of a rotation (``core.keys.rotate_webhook_secret``)."""
    current = [key.webhook_secret]
    expires = key.previous_webhook_secret_expires_at
    if key.previous_webhook_secret and expires is not None and expires > now:
        current.append(key.previous_webhook_secret)
    return current


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; ValueError naming the rule if it is malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"webhook secret must be {SECRET_PREFIX!r} followed by standard base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"webhook secret must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    _check_id_and_timestamp(msg_id, timestamp)
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request headers; one signature per secret so that receivers can rotate secrets without a gap."""
    if isinstance(secrets, str) or not secrets:
        raise ValueError("webhook secrets must be a non-empty sequence of secrets")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets),
        "content-type": "application/json",
    }


def _check_id_and_timestamp(msg_id: str, timestamp: int) -> None:
    if not msg_id or not msg_id.isascii() or not msg_id.isprintable():
        raise ValueError("webhook message id must be non-empty printable ASCII (it travels in a header)")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("webhook timestamp must be a non-negative integer of Unix seconds")
