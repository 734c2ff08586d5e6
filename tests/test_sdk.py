"""The Python SDK (``skipstep``) against the live stack, sync and async; its retries against a real HTTP
server that answers 503 first; its webhook check against a real delivery."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from service import SLOW_JOB, SMALL_JOB, Service, free_port, wait_until

from skipstep import ApiError, AsyncClient, Client, FieldError, JobView, WebhookVerificationError, verify_webhook


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.url, service.keys["alice"]) as client:
        yield client


def test_create_wait_download_list(client: Client, service: Service, tmp_path: Path) -> None:
    job = client.jobs.create("a red fox running through snow", cache={"strategy": "magcache"}, **SMALL_JOB)
    assert isinstance(job, JobView) and job.status == "queued"
    seen: list[JobView] = []
    done = client.jobs.wait(job.id, timeout=120, on_progress=seen.append)
    assert done.status == "succeeded", done.error
    assert done.result is not None and done.result.video_url.endswith(f"/jobs/{job.id}/video")
    assert all(view.id == job.id and not view.status.finished for view in seen)

    video = client.jobs.download(job.id, tmp_path / "fox.mp4")
    assert video.read_bytes()[4:8] == b"ftyp"
    assert video.stat().st_size == done.result.bytes

    listed = [view.id for view in client.jobs.list(status="succeeded", page_size=1)]
    assert job.id in listed and len(listed) == len(set(listed))
    assert client.jobs.get(job.id) == done


def test_idempotent_create_cancel_and_errors(client: Client) -> None:
    first = client.jobs.create("a slow one", idempotency_key="sdk-1", **SLOW_JOB)
    again = client.jobs.create("a slow one", idempotency_key="sdk-1", **SLOW_JOB)
    assert again.id == first.id
    client.jobs.cancel(first.id)
    assert client.jobs.wait(first.id, timeout=120).status == "canceled"

    with pytest.raises(ApiError) as invalid:
        client.jobs.create("bad size", width=65)
    assert invalid.value.status_code == 422 and invalid.value.code == "invalid_request"
    assert invalid.value.fields == [FieldError("width", "must be a multiple of 16 for wan models")]
    with pytest.raises(ApiError) as conflict:
        client.jobs.create("another body", idempotency_key="sdk-1")
    assert conflict.value.status_code == 409
    with pytest.raises(ApiError) as finished:
        client.jobs.cancel(first.id)
    assert finished.value.code == "conflict"


def test_async_client(service: Service, tmp_path: Path) -> None:
    async def run() -> tuple[JobView, list[JobView], list[str], bytes]:
        async with AsyncClient(service.url, service.keys["bob"]) as client:
            job = await client.jobs.create("an async fox", **SMALL_JOB)
            seen: list[JobView] = []
            done = await client.jobs.wait(job.id, timeout=120, on_progress=seen.append)
            listed = [str(view.id) async for view in client.jobs.list(page_size=1)]
            path = await client.jobs.download(job.id, tmp_path / "async.mp4")
            return done, seen, listed, path.read_bytes()

    done, seen, listed, video = asyncio.run(run())
    assert done.status == "succeeded", done.error
    assert all(view.id == done.id and not view.status.finished for view in seen)
    assert str(done.id) in listed
    assert video[4:8] == b"ftyp" and len(video) == done.result.bytes


class Flaky(BaseHTTPRequestHandler):
    """Answers the first ``failures`` requests 503 with Retry-After, then 202 with a job; records each request."""

    failures = 2
    job: ClassVar[dict] = {}
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append((self.path, self.headers.get("idempotency-key")))
        if len(self.seen) <= self.failures:
            body, status, extra = b'{"error": {"code": "unavailable", "message": "busy"}}', 503, {"Retry-After": "0"}
        else:
            body, status, extra = json.dumps(self.job).encode(), 202, {}
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_retries_on_503_with_one_idempotency_key_and_gives_up_on_network_errors(service: Service) -> None:
    Flaky.job = service.submit()
    Flaky.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", "key", backoff=0.01) as client:
            job = client.jobs.create("retried")
        assert str(job.id) == Flaky.job["id"]
        assert len(Flaky.seen) == 3
        assert len({key for _, key in Flaky.seen}) == 1 and Flaky.seen[0][1]
    finally:
        server.shutdown()
        server.server_close()

    nowhere = f"http://127.0.0.1:{free_port()}"
    with Client(nowhere, "key", max_retries=2, backoff=0.01) as client, pytest.raises(ApiError) as unreachable:
        client.jobs.get(Flaky.job["id"])
    assert unreachable.value.status_code is None and unreachable.value.code == "unreachable"


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, dict[str, str]]]] = []

    def do_POST(self) -> None:
        type(self).received.append((self.rfile.read(int(self.headers["content-length"])), dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_verify_webhook_on_a_real_delivery(client: Client, service: Service) -> None:
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job = client.jobs.create("hooked", webhook_url=url, **SMALL_JOB)
        assert client.jobs.wait(job.id, timeout=300).status == "succeeded"
        wait_until(lambda: Receiver.received, 60, 0.1, "the webhook delivery")
    finally:
        server.shutdown()
        server.server_close()
    body, headers = Receiver.received[0]
    event = verify_webhook(body, headers, service.webhook_secrets["alice"])
    assert event["type"] == "job.succeeded" and event["data"]["id"] == str(job.id)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace(b"succeeded", b"failed"), headers, service.webhook_secrets["alice"])
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, service.webhook_secrets["bob"])


def test_sdk_imports_no_torch() -> None:
    code = (
        "import sys, skipstep; skipstep.Client('http://127.0.0.1:1', 'k').close(); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
