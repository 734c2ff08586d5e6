"""Completion webhooks end to end: the real service (uvicorn, Celery generate and webhooks workers, PostgreSQL,
Redis) posting to a real HTTP receiver on loopback; and the address rules with private addresses not allowed."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service import Service, wait_until
from sqlalchemy import func, select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from api.app import app
from api.deps import current_settings
from core.contract.jobs import EventType
from core.db import ApiKey, DeliveryStatus, Job, JobStatus, WebhookAttempt, WebhookDelivery, session_scope, utcnow
from core.db.migrate import upgrade
from core.keys import create_key
from core.settings import Settings
from core.webhooks.delivery import SWEEP_BATCH, attempt_delivery, claim, take_due
from core.webhooks.events import record_event
from core.webhooks.retry import Verdict


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when the request arrived


@dataclass
class Receiver:
    """Records every POST; answers each path with its scripted statuses in turn, then 200."""

    port: int
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *statuses: int) -> None:
        self.scripts[path] = list(statuses)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.received if request.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        return wait_until(lambda: len(self.on(path)) >= count and self.on(path), timeout, 0.02, f"{count} at {path}")


class Handler(BaseHTTPRequestHandler):
    server: ReceiverServer

    def do_POST(self) -> None:
        arrived = time.time()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        receiver = self.server.receiver
        with receiver.lock:
            receiver.received.append(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, arrived)
            )
            script = receiver.scripts.get(self.path)
            status = script.pop(0) if script else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


class ReceiverServer(ThreadingHTTPServer):
    receiver: Receiver


def start_receiver(bound: socket.socket | None = None) -> tuple[Receiver, ReceiverServer]:
    """A receiver on a port of its own, or listening on ``bound``, a socket bound earlier."""
    server = ReceiverServer(("127.0.0.1", 0), Handler, bind_and_activate=bound is None)
    if bound is not None:
        server.socket.close()
        server.socket = bound
        server.server_address = bound.getsockname()
        server.server_activate()
    server.receiver = Receiver(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.receiver, server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


# The cheapest job the API accepts: these tests are about its webhook, not its video.
TINY_JOB = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 2}


def submit(service: Service, url: str, key: str = "alice", **body: Any) -> dict[str, Any]:
    return service.submit(key, **TINY_JOB, webhook_url=url, **body)


def new_path() -> str:
    return f"/hooks/{uuid.uuid4().hex[:8]}"


def deliveries(service: Service, job_id: str, key: str = "alice") -> list[dict[str, Any]]:
    with service.client(key) as client:
        response = client.get(f"/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def settled(service: Service, job_id: str, key: str = "alice") -> list[dict[str, Any]]:
    """The job's deliveries once every one has finished (no attempt is due any more): from then on nothing
    more can be sent for them, as a finished delivery is never claimed again."""

    def finished() -> list[dict[str, Any]] | None:
        listed = deliveries(service, job_id, key)
        return listed if listed and all(d["finished_at"] and d["next_attempt_at"] is None for d in listed) else None

    return wait_until(finished, 30, 0.1, f"the deliveries of job {job_id} to finish")


def test_a_finished_job_posts_a_signed_event_with_the_job(service: Service, receiver: Receiver) -> None:
    path = new_path()
    job = submit(service, receiver.url(path), webhook_events=["job.started", "job.succeeded"])
    finished = service.wait(job["id"])
    assert finished["status"] == "succeeded"

    requests = receiver.wait_for(path, 2)
    secret = Webhook(service.webhook_secrets["alice"])
    verified = [(secret.verify(request.body, request.headers), request) for request in requests]
    events = {event["type"]: (event, request) for event, request in verified}
    assert set(events) == {"job.started", "job.succeeded"}
    succeeded, request = events["job.succeeded"]
    assert succeeded["data"] == service.get(job["id"])  # the job as GET /jobs/{id} shows it
    assert events["job.started"][0]["data"]["status"] == "running"
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        Webhook(service.webhook_secrets["bob"]).verify(request.body, request.headers)

    listed = deliveries(service, job["id"])
    assert [d["event_type"] for d in listed] == ["job.started", "job.succeeded"]
    assert all(d["status"] == "succeeded" and d["finished_at"] for d in listed)
    attempt = listed[1]["attempts"][0]
    assert (attempt["number"], attempt["status_code"], attempt["outcome"]) == (1, 200, "delivered")
    assert attempt["duration_ms"] > 0 and attempt["next_attempt_at"] is None
    assert listed[1]["webhook_id"] == request.headers["webhook-id"]
    with service.client("bob") as bob:
        assert bob.get(f"/jobs/{job['id']}/deliveries").status_code == 404
    assert len(deliveries(service, job["id"], key="admin")) == 2
    with service.client("admin") as admin:
        page = admin.get(f"/admin/jobs/{job['id']}").text  # the dashboard's job page lists them too
    assert page.count('class="delivery" data-status="succeeded"') == 2
    assert request.headers["webhook-id"] in page


def test_failed_attempts_are_retried_until_delivered_and_never_after(service: Service, receiver: Receiver) -> None:
    path = new_path()
    receiver.script(path, 500, 500)
    job = submit(service, receiver.url(path))
    service.wait(job["id"])

    requests = receiver.wait_for(path, 3)
    [delivery] = settled(service, job["id"])
    assert len(receiver.on(path)) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the snapshot taken when the job finished, byte for byte
    assert delivery["status"] == "succeeded"
    attempts = delivery["attempts"]
    assert [(a["number"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "retry"),
        (2, 500, "retry"),
        (3, 200, "delivered"),
    ]
    assert all(a["next_attempt_at"] for a in attempts[:2])


def test_a_receiver_that_is_down_gets_the_event_once_it_is_up(service: Service) -> None:
    # Bound but not listening: connections are refused, and no other process can take the port meanwhile.
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    path = new_path()
    job = submit(service, f"http://127.0.0.1:{port}{path}")
    service.wait(job["id"])
    wait_until(lambda: any(d["attempts"] for d in deliveries(service, job["id"])), 30, what="a failed attempt")

    receiver, server = start_receiver(reserved)
    try:
        [request] = receiver.wait_for(path, 1)
        [delivery] = settled(service, job["id"])
        assert len(receiver.on(path)) == 1
    finally:
        server.shutdown()
        server.server_close()
    event = Webhook(service.webhook_secrets["alice"]).verify(request.body, request.headers)
    assert event["type"] == "job.succeeded"
    assert delivery["status"] == "succeeded"
    *refused, delivered = delivery["attempts"]
    assert refused and all(a["error"] == "connection refused" and a["outcome"] == "retry" for a in refused)
    assert delivered["status_code"] == 200


def test_gone_redirects_and_client_errors_stop_retries(service: Service, receiver: Receiver) -> None:
    """The first delivery meets 410, then admin resends of it meet a redirect and a 400: one attempt each."""
    path = new_path()
    receiver.script(path, 410, 302, 400)
    job = submit(service, receiver.url(path))
    service.wait(job["id"])
    receiver.wait_for(path, 1)
    for count in (2, 3):
        first = deliveries(service, job["id"])[0]["id"]
        with service.client("admin") as admin:
            assert admin.post(f"/admin/jobs/{job['id']}/deliveries/{first}/resend").status_code == 202
        receiver.wait_for(path, count)
    listed = settled(service, job["id"])
    assert len(receiver.on(path)) == 3
    assert [(d["status"], d["next_attempt_at"]) for d in listed] == [("gone", None), ("failed", None), ("failed", None)]
    assert [[(a["status_code"], a["outcome"]) for a in d["attempts"]] for d in listed] == [
        [(410, "gone")],
        [(302, "failed")],
        [(400, "failed")],
    ]
    assert "redirects are not followed" in listed[1]["attempts"][0]["reason"]


def test_after_a_410_the_endpoint_gets_no_more_events(service: Service, receiver: Receiver) -> None:
    path = new_path()
    receiver.script(path, 410)
    first = submit(service, receiver.url(path))
    service.wait(first["id"])
    receiver.wait_for(path, 1)
    wait_until(lambda: deliveries(service, first["id"])[0]["status"] == "gone", 30, what="the delivery to end gone")

    later = submit(service, receiver.url(path))
    service.wait(later["id"])
    [kept] = settled(service, later["id"])
    assert (kept["status"], kept["attempts"]) == ("gone", [])
    assert len(receiver.on(path)) == 1  # nothing sent after the 410
    # Another key's jobs to the same URL are not affected.
    other = submit(service, receiver.url(path), key="bob")
    service.wait(other["id"], key="bob")
    receiver.wait_for(path, 2)


def test_a_job_that_fails_in_generation_ends_generation_failed_and_posts_job_failed(
    service: Service, receiver: Receiver
) -> None:
    """A job the worker cannot finish (here a row the API would have refused: fps 0, which breaks the step after
    denoising) fails at once with ``generation_failed`` (not retried until its attempts run out) and sends
    ``job.failed``."""
    path = new_path()
    with session_scope(service.settings.database) as session:
        alice = session.scalar(select(ApiKey).where(ApiKey.name == "alice"))
        job_id = str(add_job(session, alice.id, receiver.url(path), ["job.failed"], status=JobStatus.queued, fps=0).id)
    failed = service.wait(job_id)  # sent to the worker by a heartbeat's dispatch sweep
    assert failed["status"] == "failed" and failed["error"]["code"] == "generation_failed", failed
    assert failed["error"]["message"] == "ZeroDivisionError: division by zero"
    with session_scope(service.settings.database) as session:
        assert session.get(Job, uuid.UUID(job_id)).attempts == 1
    assert failed["result"] is None and failed["finished_at"] is not None

    [request] = receiver.wait_for(path, 1)
    event = Webhook(service.webhook_secrets["alice"]).verify(request.body, request.headers)
    assert event["type"] == "job.failed"
    assert event["data"] == service.get(job_id)


def test_canceling_a_job_sends_job_canceled(service: Service, receiver: Receiver) -> None:
    path = new_path()
    job = submit(service, receiver.url(path), webhook_events=["job.canceled"])
    with service.client() as client:
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
    # Canceled while queued by the API, or (if a worker took it first) at its next step by the worker.
    assert service.wait(job["id"])["status"] == "canceled"
    [request] = receiver.wait_for(path, 1)
    event = Webhook(service.webhook_secrets["alice"]).verify(request.body, request.headers)
    assert event["type"] == "job.canceled" and event["data"]["status"] == "canceled"


def test_rotation_signs_with_both_secrets_and_resend_keeps_the_webhook_id(service: Service, receiver: Receiver) -> None:
    with session_scope(service.settings.database) as session:
        key, service.keys["rotator"] = create_key(session, "rotator")
        old = key.webhook_secret
    with service.client("rotator") as client:
        rotated = client.post("/keys/me/webhook-secret/rotate", params={"grace_hours": 1})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["webhook_secret"]
    assert new != old

    path = new_path()
    job = submit(service, receiver.url(path), key="rotator")
    service.wait(job["id"], key="rotator")
    [first] = receiver.wait_for(path, 1)
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(first.body, first.headers)["data"]["id"] == job["id"]

    # Without grace the old secret stops signing at once; an admin resend is signed afresh.
    with service.client("rotator") as client:
        newest = client.post("/keys/me/webhook-secret/rotate", params={"grace_hours": 0}).json()["webhook_secret"]
    [delivery] = deliveries(service, job["id"], key="rotator")
    resend_path = f"/admin/jobs/{job['id']}/deliveries/{delivery['id']}/resend"
    with service.client("rotator") as client:
        assert client.post(resend_path).status_code == 403
    with service.client("admin") as admin:
        resent = admin.post(resend_path)
        assert admin.post(f"/admin/jobs/{job['id']}/deliveries/{uuid.uuid4()}/resend").status_code == 404
    assert resent.status_code == 202, resent.text
    assert resent.json()["webhook_id"] == delivery["webhook_id"] and resent.json()["resend_of"] == delivery["id"]
    second = receiver.wait_for(path, 2)[1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"] and second.body == first.body
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    Webhook(newest).verify(second.body, second.headers)
    for secret in (old, new):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(second.body, second.headers)


# With private addresses not allowed (the service above allows them, as its receiver is on loopback).


@pytest.fixture
def strict(tmp_path: Path, redis_url: str) -> Settings:
    url = f"sqlite:///{tmp_path / 'strict.db'}"
    upgrade(url)
    return Settings(
        home=tmp_path,
        database_url=url,
        broker_url=redis_url,
        webhook_allow_private=False,
        webhook_connect_timeout=2,
    )


PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://10.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:9000/hook",
    "http://localhost:8080/hook",
]


def test_private_webhook_urls_are_refused_at_submit(strict: Settings) -> None:
    with session_scope(strict.database) as session:
        raw = create_key(session, "strict")[1]
    app.dependency_overrides[current_settings] = lambda: strict
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {raw}"}) as client:
            for url in PRIVATE_URLS:
                response = client.post("/jobs", json={"prompt": "a fox", "webhook_url": url})
                assert response.status_code == 422, (url, response.text)
                [named] = response.json()["error"]["fields"]
                assert named["field"] == "webhook_url" and "public address" in named["rule"], url
    finally:
        app.dependency_overrides.clear()
    with session_scope(strict.database) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def add_job(session: Any, owner_id: uuid.UUID, url: str | None, events: list[str], **fields: Any) -> Job:
    columns = {
        "owner_id": owner_id,
        "model": "wan-tiny",
        "status": JobStatus.succeeded,
        "prompt": "a fox",
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "num_inference_steps": 6,
        "guidance_scale": 5.0,
        "seed": 1,
        "fps": 16,
        "cache_strategy": "none",
        "webhook_url": url,
        "webhook_events": events,
    }
    job = Job(**(columns | fields))
    session.add(job)
    session.flush()
    return job


def test_a_private_address_is_refused_at_delivery_time(strict: Settings, receiver: Receiver) -> None:
    """The URL passed the check once (or DNS changed since): each attempt checks it again, and connects nowhere."""
    path = new_path()
    with session_scope(strict.database) as session:
        key, _ = create_key(session, "owner")
        job = add_job(session, key.id, f"http://localhost:{receiver.port}{path}", ["job.succeeded"])
        delivery_id = record_event(session, job, "job.succeeded", strict.public_url)
    assert delivery_id is not None

    decision = attempt_delivery(strict, delivery_id)
    assert decision is not None and decision.verdict is Verdict.FAILED
    assert receiver.on(path) == []
    with session_scope(strict.database) as session:
        delivery = session.get_one(WebhookDelivery, delivery_id)
        [attempt] = session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)).all()
        assert delivery.status is DeliveryStatus.failed and delivery.finished_at is not None
        assert attempt.status_code is None and attempt.outcome == "failed"
        assert attempt.error is not None and "loopback" in attempt.error
    assert attempt_delivery(strict, delivery_id) is None  # finished: nothing more is sent


def test_the_sweep_takes_due_deliveries_in_turn_across_keys(strict: Settings) -> None:
    """One key's backlog of due deliveries (deferred or retried) cannot fill a sweep while another key's wait."""
    with session_scope(strict.database) as session:
        busy, _ = create_key(session, "busy")
        other, _ = create_key(session, "other")
        backlog = [
            record_event(
                session,
                add_job(session, busy.id, "https://example.com/hook", [EventType.succeeded]),
                EventType.succeeded,
                strict.public_url,
            )
            for _ in range(SWEEP_BATCH + 20)
        ]
        late = record_event(
            session,
            add_job(session, other.id, "https://example.com/hook", [EventType.succeeded]),
            EventType.succeeded,
            strict.public_url,
        )
        # All due and never sent, the other key's last of all.
        session.execute(update(WebhookDelivery).values(dispatched_at=None))
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == late).values(next_attempt_at=utcnow()))
    with session_scope(strict.database) as session:
        taken = take_due(session)
    assert len(taken) == SWEEP_BATCH and late in taken
    assert set(taken) - {late} <= set(backlog)


def test_events_are_recorded_once_when_subscribed_and_claimed_by_one_worker(strict: Settings) -> None:
    with session_scope(strict.database) as session:
        key, _ = create_key(session, "owner")
        silent = add_job(session, key.id, None, [])
        job = add_job(session, key.id, "https://example.com/hook", ["job.succeeded"])
        assert record_event(session, silent, "job.succeeded", strict.public_url) is None
        assert record_event(session, job, EventType.started, strict.public_url) is None  # not subscribed
        delivery_id = record_event(session, job, "job.succeeded", strict.public_url)
        assert delivery_id is not None
        assert record_event(session, job, "job.succeeded", strict.public_url) is None
        body = json.loads(session.get_one(WebhookDelivery, delivery_id).body)
        assert body["type"] == "job.succeeded" and body["data"]["id"] == str(job.id)

    with session_scope(strict.database) as session:
        assert take_due(session) == []  # its task was sent when it was recorded
        # A lost task message: the sweep sends the delivery again once the message is overdue.
        session.execute(update(WebhookDelivery).values(dispatched_at=utcnow() - timedelta(minutes=1)))
        assert take_due(session) == [delivery_id]
        assert take_due(session) == []
    with session_scope(strict.database) as session:
        assert claim(session, delivery_id, timedelta(minutes=1)) is not None
        assert claim(session, delivery_id, timedelta(minutes=1)) is None
