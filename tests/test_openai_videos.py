"""OpenAI's videos API on the live stack, driven by the real ``openai`` package."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import openai
import pytest
from service import Service

# The openai package marks its videos calls deprecated (a hosted model's end of life); the API stands.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")

SMALL = {"num_inference_steps": 6}


@pytest.fixture
def client(service: Service) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.keys["alice"], max_retries=0) as client:
        yield client


def test_create_poll_retrieve_download_list(client: openai.OpenAI, service: Service) -> None:
    created = client.videos.create(
        model="wan-tiny",
        prompt="a red fox running through snow",
        seconds="1",  # 16 frames at 16 fps: 4k+1 = 17 frames
        size="64x48",
        extra_body={"cache": {"strategy": "magcache", "params": {"threshold": 0.2, "max_skip_steps": 3}}} | SMALL,
    )
    assert created.status == "queued" and created.progress == 0 and created.object == "video"
    assert (created.size, created.seconds, created.model) == ("64x48", "1", "wan-tiny")

    job = service.get(created.id)
    assert (job["input"]["width"], job["input"]["height"], job["input"]["num_frames"]) == (64, 48, 17)
    assert job["input"]["cache"] == {
        "strategy": "magcache",
        "params": {"threshold": 0.2, "max_skip_steps": 3},
        "profile": None,
    }

    done = client.videos.poll(created.id, poll_interval_ms=200)
    assert done.status == "completed" and done.progress == 100, done.error
    assert done.completed_at is not None and done.completed_at >= done.created_at
    assert client.videos.retrieve(created.id) == done

    content = client.videos.download_content(created.id)
    assert content.content[4:8] == b"ftyp"
    assert len(content.content) == service.get(created.id)["result"]["bytes"]

    other = client.videos.create(model="wan-tiny", prompt="a second one", seconds="1", size="64x48", extra_body=SMALL)
    listed = [video.id for video in client.videos.list(limit=1)]  # one per page: the client follows `after`
    assert {created.id, other.id} <= set(listed) and len(listed) == len(set(listed))


def test_json_body_and_delete(client: openai.OpenAI, service: Service) -> None:
    with service.client() as http:
        response = http.post(
            "/v1/videos", json={"prompt": "a slow one", "size": "128x128", "seconds": "2", "num_inference_steps": 50}
        )
    assert response.status_code == 200, response.text
    video_id = response.json()["id"]

    deleted = client.videos.delete(video_id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video_id, True, "video.deleted")
    gone = client.videos.poll(video_id, poll_interval_ms=200)
    assert gone.status == "failed" and gone.error is not None and gone.error.code == "canceled"
    assert client.videos.delete(video_id).deleted is True  # deleted again: nothing left


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "65x64"}, "size"),
        ({"size": "large"}, "size"),
        ({"seconds": "100"}, "seconds"),
        ({"model": "sora-2"}, "model"),
        ({"extra_body": {"cache": {"strategy": "fastest"}}}, "cache.strategy"),
    ],
)
def test_invalid_fields_are_named_as_openai_names_them(client: openai.OpenAI, fields: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.videos.create(prompt="a fox", **fields)
    assert error.value.status_code == 400
    assert error.value.param == param, error.value.body
    assert error.value.type == "invalid_request_error"


def test_auth_and_unknown_video(service: Service) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    stranger = openai.OpenAI(base_url=f"{service.url}/v1", api_key="not-a-key", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as error:
        stranger.videos.retrieve(missing)
    assert error.value.type == "authentication_error"
    bob = openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.keys["bob"], max_retries=0)
    with bob, pytest.raises(openai.NotFoundError):
        bob.videos.retrieve(missing)
