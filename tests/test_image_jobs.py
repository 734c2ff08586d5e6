"""Image-to-video jobs through the API, end to end on each new tiny preset: a first frame uploaded (multipart on
``POST /jobs``; ``input_reference`` through the ``openai`` client on ``/v1/videos``) or given by URL (a loopback
server, allowed by the test setting), checked at submit, stored beside the video, shown with the job."""

import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from service import Service, fresh_database, launch, s3_settings

from skipstep import Client

IMAGE_MODELS = ("wan-i2v-tiny", "wan2.2-ti2v-tiny", "wan2.2-i2v-a14b-tiny")
BUCKET = "skipstep-images"
JOB = {"prompt": "a red fox running through snow", "width": 64, "height": 64, "num_frames": 5, "num_inference_steps": 3}
MAX_BYTES = 300_000


def png(size: tuple[int, int] = (96, 80), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A loopback HTTP server with one image at /frame.png."""
    body = png(seed=5)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/frame.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/frame.png"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def image_service(settings, redis_url, s3_endpoint, tmp_path_factory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("image-service-logs")
    with fresh_database() as database_url:
        service = launch(
            settings,
            database_url,
            redis_url,
            logs,
            SKIPSTEP_MODELS=",".join(f"{name}={name}" for name in IMAGE_MODELS),
            SKIPSTEP_IMAGE_MAX_BYTES=str(MAX_BYTES),
            **s3_settings(s3_endpoint, BUCKET),
        )
        try:
            for name in IMAGE_MODELS:
                service.start_worker(name)
            yield service
        finally:
            service.stop()


def stored_objects(s3_endpoint: str) -> list[str]:
    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    return [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def submit_upload(service: Service, image: bytes, **job: object) -> httpx.Response:
    import json

    with service.client() as client:
        return client.post(
            "/jobs", data={"request": json.dumps(JOB | job)}, files={"image": ("frame.png", image, "image/png")}
        )


def assert_succeeded_with_its_image(service: Service, job_id: str) -> dict:
    job = service.wait(job_id, timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["bytes"] > 0
    with service.client() as client:
        stored = client.get(f"/jobs/{job_id}/image", follow_redirects=True)
    assert stored.status_code == 200
    assert Image.open(io.BytesIO(stored.content)).size == (JOB["width"], JOB["height"])
    return job


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_uploaded_and_url_images_run_end_to_end(image_service, image_server, s3_endpoint, model) -> None:
    uploaded = submit_upload(image_service, png(seed=1), model=model)
    assert uploaded.status_code == 202, uploaded.text
    job = uploaded.json()
    assert job["input_image"]["url"].endswith(f"/jobs/{job['id']}/image") and job["input_image"]["source_url"] is None
    assert f"videos/{job['id']}/input.png" in stored_objects(s3_endpoint)

    with image_service.client() as client:
        by_url = client.post("/jobs", json=JOB | {"model": model, "image_url": image_server})
    assert by_url.status_code == 202, by_url.text
    assert by_url.json()["input_image"] == {"url": None, "source_url": image_server}

    assert_succeeded_with_its_image(image_service, job["id"])
    fetched = assert_succeeded_with_its_image(image_service, by_url.json()["id"])
    assert fetched["input_image"]["url"].endswith(f"/jobs/{fetched['id']}/image")


def test_the_sdk_and_submit_send_a_first_frame(image_service, tmp_path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(seed=2))
    with Client(image_service.url, image_service.keys["alice"]) as client:
        job = client.jobs.create(image=png(seed=3), model="wan-i2v-tiny", **JOB)
    assert job.input_image is not None and job.input_image.url is not None
    env = os.environ | {"SKIPSTEP_API_KEY": image_service.keys["alice"], "SKIPSTEP_DEVICE": "cpu"}
    fields = ["--width", "64", "--height", "64", "--num-frames", "5", "--steps", "3"]
    submitted = subprocess.run(
        [sys.executable, "-m", "core.cli", "submit", "--api-url", image_service.url, "--model", "wan-i2v-tiny"]
        + ["--prompt", "a fox", "--image", str(frame), *fields, "--wait", "--out", str(tmp_path / "out.mp4")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0
    assert_succeeded_with_its_image(image_service, str(job.id))
    missing = subprocess.run(
        [sys.executable, "-m", "core.cli", "submit", "--api-url", image_service.url, "--model", "wan-i2v-tiny"]
        + ["--prompt", "a fox", "--image", str(tmp_path / "none.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2 and "--image: no such file" in missing.stderr


def test_a_remix_runs_from_its_sources_first_frame(image_service) -> None:
    uploaded = submit_upload(image_service, png(seed=2), model="wan-i2v-tiny")
    assert uploaded.status_code == 202, uploaded.text
    source = assert_succeeded_with_its_image(image_service, uploaded.json()["id"])
    with image_service.client() as client:
        remix = client.post(f"/jobs/{source['id']}/remix", json={"prompt": "the same fox, at night"})
    assert remix.status_code == 202, remix.text
    remixed = assert_succeeded_with_its_image(image_service, remix.json()["id"])
    with image_service.client() as client:
        images = [client.get(f"/jobs/{job['id']}/image", follow_redirects=True).content for job in (source, remixed)]
    assert np.array_equal(*(np.asarray(Image.open(io.BytesIO(image))) for image in images))


def test_models_say_which_take_images(image_service) -> None:
    with image_service.client() as client:
        listed = {model["name"]: model for model in client.get("/models").json()}
    assert {name: model["image_input"] for name, model in listed.items()} == {
        "wan-i2v-tiny": "required",
        "wan2.2-ti2v-tiny": "optional",
        "wan2.2-i2v-a14b-tiny": "required",
    }
    assert listed["wan2.2-i2v-a14b-tiny"]["experts"] == ["high_noise", "low_noise"]
    assert listed["wan2.2-ti2v-tiny"]["family"] == "wan2.2"


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, format="GIF")
    return out.getvalue()


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("L", (6000, 6000)).save(out, format="PNG")  # a few KB that inflate to 36 MB
    return out.getvalue()


@pytest.mark.parametrize(
    ("image", "rule"),
    [
        (png()[:400], "truncated or corrupt"),
        (_gif(), "PNG, JPEG or WebP"),
        (_bomb(), "decompression bomb"),
        (png((350, 320), seed=2), f"at most {MAX_BYTES} bytes"),
        (png((400, 40)), "aspect ratio"),
    ],
    ids=["truncated", "wrong-type", "bomb", "too-large", "aspect"],
)
def test_bad_images_are_refused_and_nothing_is_stored(image_service, s3_endpoint, image, rule) -> None:
    before = stored_objects(s3_endpoint)
    with image_service.client() as client:
        jobs_before = len(client.get("/jobs", params={"limit": 100}).json()["jobs"])
    response = submit_upload(image_service, image, model="wan-i2v-tiny")
    assert response.status_code == 422, response.text
    [field] = response.json()["error"]["fields"]
    assert field["field"] == "image" and rule in field["rule"], field
    assert stored_objects(s3_endpoint) == before
    with image_service.client() as client:
        assert len(client.get("/jobs", params={"limit": 100}).json()["jobs"]) == jobs_before


def test_image_rules_of_the_model(image_service) -> None:
    with image_service.client() as client:
        missing = client.post("/jobs", json=JOB | {"model": "wan-i2v-tiny"})
    assert missing.status_code == 422
    assert missing.json()["error"]["fields"][0]["field"] == "image"


def test_openai_client_sends_input_reference(image_service) -> None:
    with openai.OpenAI(
        base_url=f"{image_service.url}/v1", api_key=image_service.keys["alice"], max_retries=0
    ) as client:
        created = client.videos.create(
            model="wan-i2v-tiny",
            prompt="a red fox running through snow",
            seconds="0.25",  # 4 frames at 16 fps: 4k+1 = 5 frames
            size="64x64",
            input_reference=("frame.png", png(seed=9), "image/png"),
            extra_body={"num_inference_steps": 3},
        )
    assert created.status == "queued"
    assert_succeeded_with_its_image(image_service, created.id)
