"""One slow receiver must not hold up anyone else's webhooks: on the real service (threads-pool webhooks
worker), deliveries to three receivers that trickle their answers are retried while another key's delivery
to a fast receiver still goes out at once, and no receiver gets more attempts at a time than its cap."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from service import Service, wait_until
from test_webhooks import TINY_JOB, Receiver, new_path, start_receiver
from trickle import TrickleReceiver

from core.db import Job, session_scope

SLOW_RECEIVERS = 3
PER_SLOW_RECEIVER = 6  # more than the per-endpoint cap (4 by default)


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


def test_slow_receivers_do_not_delay_another_keys_delivery(
    service: Service, slow: list[TrickleReceiver], fast: Receiver
) -> None:
    cap = service.settings.webhook_endpoint_concurrency
    for receiver in slow:
        for _ in range(PER_SLOW_RECEIVER):
            service.submit("alice", **TINY_JOB, webhook_url=receiver.url())
    # Every slow receiver is holding attempts before bob's job finishes (the old two-process pool was full
    # with two).
    wait_until(lambda: all(r.open >= 1 for r in slow), 120, 0.1, "every slow receiver to hold an attempt")
    path = new_path()
    bob = service.submit("bob", **TINY_JOB, webhook_url=fast.url(path))
    assert service.wait(bob["id"], key="bob")["status"] == "succeeded"
    [arrived] = fast.wait_for(path, 1, timeout=60)
    held = sum(r.open for r in slow)
    with session_scope(service.settings.database) as session:
        job = session.get(Job, bob["id"])
        assert job is not None and job.finished_at is not None
        latency = arrived.at - job.finished_at.timestamp()
    print(f"\nbob's delivery {latency:.2f} s after his job finished; slow attempts open meanwhile: {held}")
    assert held >= 2
    # A delivery stuck behind the slow ones would wait a whole attempt deadline (15 s) or more.
    assert latency < 5
    assert max(r.most_open for r in slow) == cap, [r.most_open for r in slow]
