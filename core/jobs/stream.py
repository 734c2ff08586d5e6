"""A job's server-sent events: ``status`` when its status changes, ``progress`` at each step it records
while running, and a last event named for its terminal status (``succeeded``, ``failed``, ``canceled``)
carrying the whole job, after which the stream ends.

An event's id is the job's ``version`` (bumped by the state machine at every visible change), so a client
that reconnects with ``Last-Event-ID`` gets the job's current state if it changed since, and nothing twice.
Events are snapshots: a client that was away sees the state now, not each step it missed. The stream
re-reads the row when the state machine announces a change (``core.jobs.notify``) and at least every
``SKIPSTEP_EVENT_POLL_SECONDS`` whatever the broker does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import redis
import redis.asyncio

from core.db import Job, JobStatus, sessions
from core.jobs.expected import standing
from core.jobs.notify import channel
from core.jobs.view import JobView, job_view
from core.settings import Settings

# A comment line this often keeps proxies from closing an idle stream and lets the server notice a gone client.
KEEPALIVE_SECONDS = 15.0


class StreamSlots:
    """How many streams each API key holds open in this process, against a cap."""

    def __init__(self) -> None:
        self._open: Counter[uuid.UUID] = Counter()
        self._lock = threading.Lock()

    def take(self, key_id: uuid.UUID, cap: int) -> bool:
        with self._lock:
            if self._open[key_id] >= cap:
                return False
            self._open[key_id] += 1
            return True

    def release(self, key_id: uuid.UUID) -> None:
        with self._lock:
            self._open[key_id] -= 1
            if self._open[key_id] <= 0:
                del self._open[key_id]


def read(settings: Settings, job_id: uuid.UUID) -> tuple[int, JobView]:
    with sessions(settings.database)() as session:
        job = session.get_one(Job, job_id)
        return job.version, job_view(job, settings.public_url, standing(session, job, settings.heartbeat_seconds))


def event_name(view: JobView, previous: JobStatus | None) -> str:
    if view.status.finished:
        return view.status.value
    if view.status == previous == JobStatus.running and view.progress is not None:
        return "progress"
    return "status"


def frame(name: str, version: int, view: JobView) -> str:
    data: Any = view.progress if name == "progress" else view
    return f"id: {version}\nevent: {name}\ndata: {json.dumps(data.model_dump(mode='json'))}\n\n"


async def events(settings: Settings, job_id: uuid.UUID, last_seen: int | None) -> AsyncIterator[str]:
    """The stream's text, event by event, until the job reaches a terminal status."""
    listener = await subscribe(settings.broker_url, job_id)
    previous: JobStatus | None = None
    quiet_since = time.monotonic()
    try:
        while True:
            version, view = await anyio.to_thread.run_sync(read, settings, job_id)
            if last_seen is None or version > last_seen:
                name = event_name(view, previous)
                yield frame(name, version, view)
                previous, last_seen, quiet_since = view.status, version, time.monotonic()
            if view.status.finished:
                return
            if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            await changed(listener, settings.event_poll_seconds)
    finally:
        if listener is not None:
            with anyio.CancelScope(shield=True):
                await unsubscribe(listener)


async def subscribe(url: str | None, job_id: uuid.UUID) -> redis.asyncio.client.PubSub | None:
    """Listen for the job's change announcements; None (poll only) without a reachable broker."""
    if url is None:
        return None
    listener = redis.asyncio.Redis.from_url(url, socket_connect_timeout=1).pubsub()
    try:
        await listener.subscribe(channel(job_id))
    except (redis.RedisError, OSError):
        await unsubscribe(listener)
        return None
    return listener


async def changed(listener: redis.asyncio.client.PubSub | None, seconds: float) -> None:
    """Return when the job is announced changed, or after ``seconds``."""
    if listener is None:
        await anyio.sleep(seconds)
        return
    try:
        if await listener.get_message(ignore_subscribe_messages=True, timeout=seconds) is not None:
            # Several announcements may have come at once: one re-read covers them all.
            while await listener.get_message(ignore_subscribe_messages=True, timeout=0) is not None:
                pass
    except (redis.RedisError, OSError):
        await anyio.sleep(seconds)


async def unsubscribe(listener: redis.asyncio.client.PubSub) -> None:
    try:
        await listener.aclose()
        await listener.connection_pool.aclose()
    except (redis.RedisError, OSError):
        pass
