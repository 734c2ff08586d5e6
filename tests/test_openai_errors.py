"""/v1 answers every error in OpenAI's shape, so that the real ``openai`` package raises its typed errors with
skipstep's message and the field at fault as ``param``."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest
from service import Service

from core.db import session_scope
from core.keys import create_key

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")

SMALL = {"size": "64x64", "seconds": "1"}
MISSING = "00000000-0000-0000-0000-000000000000"


def openai_client(service: Service, raw_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=raw_key, max_retries=0)


def new_key(service: Service, **limits: object) -> str:
    with session_scope(service.settings.database) as session:
        key, raw = create_key(session, f"openai-{uuid.uuid4().hex[:6]}")
        for name, value in limits.items():
            setattr(key, name, value)
    return raw


@pytest.fixture
def alice(api_alone: Service) -> Iterator[openai.OpenAI]:
    with openai_client(api_alone, api_alone.keys["alice"]) as client:
        yield client


def assert_openai_shape(error: openai.APIStatusError) -> dict:
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    # The package puts our message in its exception's, and the error object in .body.
    assert error.body == body["error"] and error.message.endswith(f" - {body['error']['message']}")
    return body["error"]


def test_bad_request_carries_our_message_and_param(alice: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        alice.videos.create(prompt="a fox", size="65x64", seconds="1")
    body = assert_openai_shape(error.value)
    assert (body["param"], body["type"], body["code"]) == ("size", "invalid_request_error", "bad_request")
    assert body["message"] == "width: must be a multiple of 16 for wan models"


def test_not_found_on_every_route_that_takes_an_id(alice: openai.OpenAI) -> None:
    calls = [
        lambda: alice.videos.retrieve(MISSING),
        lambda: alice.videos.delete(MISSING),
        lambda: alice.videos.download_content(MISSING),
        lambda: alice.videos.list(after=MISSING),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as error:
            call()
        assert assert_openai_shape(error.value)["message"] == f"video {MISSING} not found"


def test_rate_limits_raise_rate_limit_error(api_alone: Service) -> None:
    with openai_client(api_alone, new_key(api_alone, max_active_jobs=1, rate_per_second=0)) as capped:
        first = capped.videos.create(prompt="a fox", **SMALL)
        with pytest.raises(openai.RateLimitError) as error:
            capped.videos.create(prompt="a fox", **SMALL)
        capped.videos.delete(first.id)
    assert assert_openai_shape(error.value)["type"] == "rate_limit_error"
    assert "max_active_jobs" in error.value.message and error.value.response.headers["retry-after"].isdigit()

    with openai_client(api_alone, new_key(api_alone, rate_per_second=0.05, rate_burst=1)) as throttled:
        throttled.videos.list()
        with pytest.raises(openai.RateLimitError) as error:
            throttled.videos.list()
    assert "requests per second" in error.value.message


def test_a_bad_key_raises_authentication_error(api_alone: Service) -> None:
    with openai_client(api_alone, "not-a-key") as stranger, pytest.raises(openai.AuthenticationError) as error:
        stranger.videos.create(prompt="a fox", **SMALL)
    assert assert_openai_shape(error.value)["type"] == "authentication_error"
    assert "valid API key is required" in error.value.message


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/videos", {"json": {"prompt": "x" * 70_000}}, 413),
        ("POST", "/v1/videos", {"json": {"prompt": "a fox\u0007"}}, 400),
        ("GET", "/v1/videos?after=not-an-id", {}, 400),
        ("GET", "/v1/videos?after=%00", {}, 400),
        ("PUT", "/v1/videos", {}, 405),
        ("GET", "/v1/nothing", {}, 404),
    ],
)
def test_errors_before_any_route_have_openai_shape(
    api_alone: Service, method: str, path: str, kwargs: dict, status: int
) -> None:
    headers = {"Authorization": f"Bearer {api_alone.keys['alice']}"}
    response = httpx.request(method, f"{api_alone.url}{path}", headers=headers, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
