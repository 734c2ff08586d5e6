"""Remix on the live stack: a new job from a succeeded one with some fields replaced, through the SDK and the
``openai`` package; with ``compare`` its fidelity is measured against the source's frames."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest
from service import SLOW_JOB, SMALL_JOB, Service

from skipstep import ApiError, Client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.url, service.keys["alice"]) as client:
        yield client


def test_remix_with_the_sdk_keeps_seed_and_shape_and_compares_with_its_source(client: Client) -> None:
    # MagCache skipping steps: its frames differ from the uncached run of the same request.
    cache = {"strategy": "magcache", "params": {"threshold": 0.5, "max_skip_steps": 3}}
    source = client.jobs.wait(client.jobs.create("a red fox", cache=cache, **SMALL_JOB).id, timeout=120)
    assert source.status == "succeeded", source.error

    again = client.jobs.remix(source.id, compare=True)
    uncached = client.jobs.remix(source.id, prompt="a red fox", cache={"strategy": "none"}, compare=True)
    for remix in (again, uncached):
        assert remix.remix_of == source.id and remix.status == "queued"
        assert remix.input.seed == source.input.seed and remix.input.prompt == source.input.prompt
        assert (remix.input.width, remix.input.num_frames) == (source.input.width, source.input.num_frames)
    assert again.input.cache == source.input.cache and uncached.input.cache.strategy == "none"

    again, uncached = (client.jobs.wait(remix.id, timeout=180) for remix in (again, uncached))
    assert again.status == uncached.status == "succeeded"
    # Against the source's frames: the same request again is identical; the uncached one is not.
    assert again.metrics.fidelity.baseline == "source" and again.metrics.fidelity.psnr is None
    assert again.metrics.fidelity.ssim == pytest.approx(1.0)
    assert uncached.metrics.fidelity.baseline == "source" and uncached.metrics.fidelity.psnr is not None
    assert uncached.metrics.speedup_basis == "estimated"  # speedup stays against the uncached run

    with pytest.raises(ApiError) as reshaped:
        client.jobs.remix(source.id, width=32, compare=True)
    assert reshaped.value.status_code == 422 and reshaped.value.fields[0].field == "compare"
    with pytest.raises(ApiError) as invalid:
        client.jobs.remix(source.id, num_frames=10)
    assert invalid.value.status_code == 422 and invalid.value.fields[0].field == "num_frames"
    with pytest.raises(ApiError) as unknown:
        client.jobs.remix(source.id, model="wan-tiny")
    assert unknown.value.status_code == 422 and unknown.value.fields[0].field == "model"
    with pytest.raises(ApiError) as missing:
        client.jobs.remix(uuid.uuid4(), prompt="x")
    assert missing.value.status_code == 404

    running = client.jobs.create("a slow one", **SLOW_JOB)
    with pytest.raises(ApiError) as unfinished:
        client.jobs.remix(running.id, prompt="x")
    assert unfinished.value.status_code == 409
    client.jobs.cancel(running.id)


def test_remix_with_the_openai_package(service: Service) -> None:
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.keys["alice"], max_retries=0) as client:
        source = client.videos.create(prompt="a red fox", size="64x48", seconds="0.5", extra_body={"seed": 11} | STEPS)
        source = client.videos.poll(source.id, poll_interval_ms=200)
        assert source.status == "completed"

        remix = client.videos.remix(source.id, prompt="a blue fox")
        assert remix.remixed_from_video_id == source.id and remix.prompt == "a blue fox"
        assert (remix.size, remix.seconds) == (source.size, source.seconds)
        remix = client.videos.poll(remix.id, poll_interval_ms=200)
        assert remix.status == "completed" and remix.remixed_from_video_id == source.id
        assert client.videos.download_content(remix.id).content[4:8] == b"ftyp"
        job = service.get(remix.id)
        assert job["input"]["seed"] == 11 and job["input"]["num_inference_steps"] == STEPS["num_inference_steps"]

        with pytest.raises(openai.BadRequestError) as error:
            client.videos.remix(source.id, prompt="x", extra_body={"size": "65x48"})
        assert error.value.param == "size"
        with pytest.raises(openai.NotFoundError):
            client.videos.remix(str(uuid.uuid4()), prompt="x")


STEPS = {"num_inference_steps": SMALL_JOB["num_inference_steps"]}
