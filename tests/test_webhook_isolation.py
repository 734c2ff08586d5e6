"""One slow receiver must not hold up anyone else's webhooks: on the real service (threads-pool webhooks
worker, PostgreSQL, Redis), deliveries to three receivers that trickle their answers are in flight and
retried while another key's delivery to a fast receiver still goes out at once, and no receiver gets
more attempts at a time than its cap. The events are recorded on finished job rows as a worker records
them at a job's end (no model runs: this is about the webhooks worker)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from service import Service, wait_until
from sqlalchemy import select
from test_webhooks import Receiver, add_job, new_path, start_receiver
from trickle import TrickleReceiver

from core.db import ApiKey, WebhookDelivery, session_scope
from core.webhooks.events import record_event
from worker.app import DELIVER_WEBHOOK, WEBHOOKS_QUEUE, create_celery

SLOW_RECEIVERS = 3
PER_SLOW_RECEIVER = 6  # more than the per-endpoint cap (4 by default)
SUCCEEDED = "job.succeeded"


@pytest.fixture
def slow() -> Iterator[list[TrickleReceiver]]:
    receivers = [TrickleReceiver(interval=3) for _ in range(SLOW_RECEIVERS)]
    yield receivers
    for receiver in receivers:
        receiver.close()


@pytest.fixture
def fast() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


def finished_job_event(service: Service, broker: Celery, owner: str, url: str) -> uuid.UUID:
    """A succeeded job of ``owner`` whose event goes to ``url``, recorded and sent to the webhooks queue as the
    worker that ended the job sends it."""
    with session_scope(service.settings.database) as session:
        key = session.scalar(select(ApiKey).where(ApiKey.name == owner))
        assert key is not None
        job = add_job(session, key.id, url, [SUCCEEDED])
        delivery_id = record_event(session, job, SUCCEEDED, service.url)
    assert delivery_id is not None
    broker.send_task(DELIVER_WEBHOOK, args=[str(delivery_id)], queue=WEBHOOKS_QUEUE)
    return delivery_id


def test_slow_receivers_do_not_delay_another_keys_delivery(
    service: Service, slow: list[TrickleReceiver], fast: Receiver
) -> None:
    cap = service.settings.webhook_endpoint_concurrency
    broker = create_celery(service.settings.model_copy(update={"broker_url": service.env["SKIPSTEP_BROKER_URL"]}))
    for receiver in slow:
        for _ in range(PER_SLOW_RECEIVER):
            finished_job_event(service, broker, "alice", receiver.url())
    # Every slow receiver holds as many attempts as its cap (the old two-process pool was full with two).
    wait_until(lambda: all(r.open == cap for r in slow), 60, 0.05, "the slow receivers to fill their caps")
    path = new_path()
    delivery_id = finished_job_event(service, broker, "bob", fast.url(path))
    [arrived] = fast.wait_for(path, 1, timeout=60)
    held = sum(r.open for r in slow)
    with session_scope(service.settings.database) as session:
        recorded = session.get_one(WebhookDelivery, delivery_id).created_at
    latency = arrived.at - recorded.timestamp()
    print(f"\nbob's delivery arrived {latency:.3f} s after its event; slow attempts in flight meanwhile: {held}")
    assert held == SLOW_RECEIVERS * cap
    # A delivery stuck behind the slow ones would wait a whole attempt deadline (15 s) or more.
    assert latency < 5
    assert max(r.most_open for r in slow) == cap, [r.most_open for r in slow]
