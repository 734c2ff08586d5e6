"""Delivery slots in Redis: a slot is taken of the receiver and of the key together or not at all, and a process
that dies holding slots frees them when their leases lapse."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import timedelta

from core.webhooks import slots

LEASE = timedelta(seconds=1.5)
RECEIVER = "http://hooks.example:8080/a"
SAME_RECEIVER = "http://HOOKS.example:8080/b"
OTHER_RECEIVER = "http://other.example/hook"

HOLD = """
import sys, time, uuid
from datetime import timedelta
from core.webhooks import slots
held = slots.slot(sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3]), 1, 1, timedelta(seconds=float(sys.argv[4])))
assert held.__enter__()
print("held", flush=True)
time.sleep(60)
"""


def free(redis_url: str, url: str, owner: uuid.UUID) -> bool:
    with slots.slot(redis_url, url, owner, 1, 1, LEASE) as taken:
        return taken


def test_a_slot_is_taken_of_receiver_and_key_together_or_not_at_all(redis_url: str) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with slots.slot(redis_url, RECEIVER, alice, 1, 1, LEASE) as taken:
        assert taken
        assert not free(redis_url, SAME_RECEIVER, bob)  # the receiver (scheme, host, port) is full
        assert not free(redis_url, OTHER_RECEIVER, alice)  # the key is full
        # Refused for alice's cap, so it took none of the other receiver's: bob still gets it.
        assert free(redis_url, OTHER_RECEIVER, bob)
    assert free(redis_url, SAME_RECEIVER, bob) and free(redis_url, OTHER_RECEIVER, alice)  # released on leaving


def test_a_process_that_dies_holding_slots_frees_them_when_the_lease_lapses(redis_url: str) -> None:
    owner = uuid.uuid4()
    seconds = 3.0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, redis_url, RECEIVER, str(owner), str(seconds)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        held_at = time.monotonic()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert not free(redis_url, RECEIVER, uuid.uuid4())
    assert not free(redis_url, OTHER_RECEIVER, owner)
    deadline = held_at + seconds + 5
    while not (free(redis_url, RECEIVER, uuid.uuid4()) and free(redis_url, OTHER_RECEIVER, owner)):
        assert time.monotonic() < deadline, "the dead process's slots were never freed"
        time.sleep(0.05)
    assert time.monotonic() - held_at > seconds - 0.5  # not before its lease lapsed
