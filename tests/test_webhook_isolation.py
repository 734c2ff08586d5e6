"""Slow receivers must not hold up anyone else's webhooks: on the real service (threads-pool webhooks workers,
PostgreSQL, Redis), deliveries to receivers that trickle their answers are in flight while another key's delivery
to a fast receiver still goes out at once; no receiver gets more attempts at a time than its cap, nor one key's
deliveries more than the key's cap, counted across webhooks processes; and once the slow receivers answer, every
delivery held back for want of a slot is delivered, with no attempt counted for the wait. The events are recorded
on finished job rows as a worker records them at a job's end (no model runs: this is about the webhooks worker)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from service import Service, wait_until
from sqlalchemy import select
from test_webhooks import Receiver, add_job, new_path, start_receiver
from trickle import Census, TrickleReceiver

from core.db import DeliveryStatus, WebhookAttempt, WebhookDelivery, session_scope
from core.keys import create_key
from core.webhooks.events import record_event
from worker.app import DELIVER_WEBHOOK, WEBHOOKS_QUEUE, create_celery

SUCCEEDED = "job.succeeded"
# The case reported in issue 23: 29 receivers answering one byte every 8 s, fed 87 deliveries by one key, filled
# a worker's 32 threads (the per-receiver cap of 4 allowed 8 such receivers to), and another key's delivery to a
# fast receiver waited 27 s.
MANY_SLOW_RECEIVERS = 29
PER_MANY = 3
TRICKLE_SECONDS = 8


@pytest.fixture
def fast() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture
def broker(service: Service) -> Celery:
    return create_celery(service.settings.model_copy(update={"broker_url": service.env["SKIPSTEP_BROKER_URL"]}))


def new_key(service: Service) -> uuid.UUID:
    with session_scope(service.settings.database) as session:
        key, _ = create_key(session, f"webhooks-{uuid.uuid4().hex[:8]}")
        return key.id


def finished_job_event(service: Service, broker: Celery, owner: uuid.UUID, url: str) -> uuid.UUID:
    """A succeeded job of ``owner`` whose event goes to ``url``, recorded and sent to the webhooks queue as the
    worker that ended the job sends it."""
    with session_scope(service.settings.database) as session:
        job = add_job(session, owner, url, [SUCCEEDED])
        delivery_id = record_event(session, job, SUCCEEDED, service.url)
    assert delivery_id is not None
    broker.send_task(DELIVER_WEBHOOK, args=[str(delivery_id)], queue=WEBHOOKS_QUEUE)
    return delivery_id


def latency_of_another_keys_delivery(service: Service, broker: Celery, fast: Receiver) -> float:
    """Seconds from a fresh key's event to its arrival at a fast receiver."""
    path = new_path()
    delivery_id = finished_job_event(service, broker, new_key(service), fast.url(path))
    [arrived] = fast.wait_for(path, 1, timeout=60)
    with session_scope(service.settings.database) as session:
        recorded = session.get_one(WebhookDelivery, delivery_id).created_at
    return arrived.at - recorded.timestamp()


def all_delivered_once(service: Service, delivery_ids: list[uuid.UUID], timeout: float) -> None:
    """Every delivery succeeds, each with the one attempt that reached its receiver: waiting for a slot counts as
    no attempt and loses nothing."""

    def succeeded() -> bool:
        with session_scope(service.settings.database) as session:
            statuses = session.scalars(select(WebhookDelivery.status).where(WebhookDelivery.id.in_(delivery_ids)))
            return all(status is DeliveryStatus.succeeded for status in statuses)

    wait_until(succeeded, timeout, 0.2, f"{len(delivery_ids)} deliveries to succeed")
    with session_scope(service.settings.database) as session:
        attempts = session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids))).all()
        deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))).all()
    assert sorted(a.delivery_id for a in attempts) == sorted(delivery_ids), [(a.number, a.reason) for a in attempts]
    assert {a.outcome for a in attempts} == {"delivered"}
    assert {d.attempts for d in deliveries} == {1}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def test_a_slow_receiver_gets_at_most_its_cap_of_attempts(service: Service, broker: Celery, fast: Receiver) -> None:
    cap = service.settings.webhook_endpoint_concurrency
    assert cap < service.settings.webhook_key_concurrency  # the receiver's cap, not the key's, binds here
    slow = TrickleReceiver(interval=3)
    try:
        owner = new_key(service)
        held_back = [finished_job_event(service, broker, owner, slow.url()) for _ in range(cap + 2)]
        wait_until(lambda: slow.open == cap, 60, 0.05, "the slow receiver to fill its cap")
        latency = latency_of_another_keys_delivery(service, broker, fast)
        print(f"\nanother key's delivery arrived {latency:.3f} s after its event; slow attempts held: {slow.open}")
        assert latency < 1
        assert slow.open == cap
        slow.finish()
        all_delivered_once(service, held_back, 60)
        assert slow.most_open == cap
    finally:
        slow.close()


def test_one_keys_many_slow_receivers_do_not_delay_another_keys_delivery(
    service: Service, broker: Celery, fast: Receiver
) -> None:
    key_cap = service.settings.webhook_key_concurrency
    group = Census()
    slow = [TrickleReceiver(TRICKLE_SECONDS, group) for _ in range(MANY_SLOW_RECEIVERS)]
    # A second webhooks process beside the service's: the key's cap holds across both.
    second = service.start_webhooks_worker()
    try:
        owner = new_key(service)
        held_back = [
            finished_job_event(service, broker, owner, receiver.url()) for receiver in slow for _ in range(PER_MANY)
        ]
        wait_until(lambda: group.open == key_cap, 60, 0.05, "the slow key to fill its share")
        latency = latency_of_another_keys_delivery(service, broker, fast)
        print(
            f"\nanother key's delivery arrived {latency:.3f} s after its event, with {group.open} of the slow "
            f"key's {len(held_back)} deliveries in flight (at most {group.most_open} at once)"
        )
        assert latency < 1
        assert group.open == key_cap
        for receiver in slow:
            receiver.finish()
        all_delivered_once(service, held_back, 120)
        assert group.most_open == key_cap
    finally:
        for receiver in slow:
            receiver.close()
        stop(second)
