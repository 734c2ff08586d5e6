"""What a poller of ``GET /jobs/{id}`` gets besides the job: an entity tag, so that an unchanged job answers
304 without being read and rendered again; a ``Retry-After`` hint while it is queued; and a wait for its next
change (long-poll), on the same announcements as its event stream (``core.jobs.notify``).

The tag covers the job's ``version`` (bumped by the state machine at every visible change) and, while it is
queued, its queue position and whether it waits for a worker, which move as other jobs run. The estimated
start is an estimate and is left out: a 304 may carry an older one.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from dataclasses import dataclass

import anyio
from sqlalchemy.orm import Session

from core.db import ApiKey, JobStatus, sessions
from core.jobs import repository
from core.jobs.expected import Standing, standing
from core.jobs.stream import changed, subscribe, unsubscribe
from core.jobs.tag_cache import tag_cache_for
from core.jobs.view import JobView, job_view
from core.settings import Settings

# Longest hint a queued job gets: an estimate further out than this is not worth waiting on blindly.
MAX_RETRY_AFTER = 60


@dataclass(frozen=True)
class Snapshot:
    """A job as a poller sees it: its tag, and its view unless the poller's copy is current."""

    etag: str
    finished: bool
    view: JobView | None
    retry_after: int | None


def etag(version: int, place: Standing | None = None) -> str:
    parts = [str(version)]
    if place is not None and place.position is not None:
        parts += [str(place.position), "w" if place.waiting_for_worker else ""]
    return '"' + hashlib.blake2s("/".join(parts).encode(), digest_size=8).hexdigest() + '"'


def seen_tags(if_none_match: str | None) -> frozenset[str]:
    """The tags of an ``If-None-Match`` header, weak ones compared as strong (RFC 9110's weak comparison)."""
    if not if_none_match:
        return frozenset()
    return frozenset(tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip())


def read(session: Session, job_id: uuid.UUID, key: ApiKey, settings: Settings, seen: frozenset[str]) -> Snapshot | None:
    """The job's snapshot for ``key`` (None: no such job for it). A job that is not queued and whose tag the
    poller has is answered from its version alone. The tag served is kept for the conditional GETs that follow
    (``core.jobs.tag_cache``) under the change counters read before what the tag covers: the job's before the job,
    its queue's before the queue position."""
    cache = tag_cache_for(settings.broker_url) if settings.broker_url else None
    stamp = cache.stamp(job_id, list(settings.model_sources)) if cache is not None else None
    job = repository.get(session, job_id, key)
    if job is None:
        return None
    queued = job.status == JobStatus.queued
    if not queued and (tag := etag(job.version)) in seen:
        if cache is not None and stamp is not None:
            cache.store(job_id, stamp, job.owner_id, tag, None, None)
        return Snapshot(tag, job.status.finished, None, None)
    place = standing(session, job, settings.heartbeat_seconds)
    tag = etag(job.version, place if queued else None)
    start = place.estimated_start_at.timestamp() if place.estimated_start_at is not None else None
    if cache is not None and stamp is not None and (not queued or job.model in stamp.queues):
        cache.store(job_id, stamp, job.owner_id, tag, job.model if queued else None, start)
    view = None
    if tag not in seen:
        view = job_view(job, settings.public_url, place)
    return Snapshot(tag, job.status.finished, view, retry_after(start, settings) if place.position else None)


def retry_after(estimated_start: float | None, settings: Settings) -> int:
    """Seconds before looking at a queued job again is worthwhile: until its estimated start (epoch seconds), or a
    heartbeat (when a worker would report) where nothing estimates it."""
    seconds = settings.heartbeat_seconds if estimated_start is None else estimated_start - time.time()
    return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))


def read_fresh(job_id: uuid.UUID, key: ApiKey, settings: Settings, seen: frozenset[str]) -> Snapshot | None:
    with sessions(settings.database)() as session:
        return read(session, job_id, key, settings, seen)


async def next_change(
    settings: Settings, job_id: uuid.UUID, key: ApiKey, current: str, seconds: float, answer_unchanged: bool
) -> Snapshot | None:
    """Wait up to ``seconds`` for the job's tag to differ from ``current`` (or for it to finish), then its
    snapshot. Unchanged at the end: the snapshot without a view, or with one if ``answer_unchanged``."""
    deadline = time.monotonic() + seconds
    listener = await subscribe(settings.broker_url, job_id)
    try:
        while (left := deadline - time.monotonic()) > 0:
            await changed(listener, min(left, settings.event_poll_seconds))
            snapshot = await anyio.to_thread.run_sync(read_fresh, job_id, key, settings, frozenset({current}))
            if snapshot is None or snapshot.view is not None or snapshot.finished:
                return snapshot
    finally:
        if listener is not None:
            with anyio.CancelScope(shield=True):
                await unsubscribe(listener)
    seen = frozenset() if answer_unchanged else frozenset({current})
    return await anyio.to_thread.run_sync(read_fresh, job_id, key, settings, seen)
