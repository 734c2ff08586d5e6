"""Tells a job's event streams that the job changed.

The state machine (``core.jobs.transitions``) marks each job it changes; once the session's transaction
commits, the job ids are published on the broker's Redis (channel ``skipstep:job:<id>``), where the
streams (``core.jobs.stream``) wait, and the change counters of the jobs, and of the models whose queue
changed (a job entered or left it, a worker began or stopped taking its jobs), are bumped
(``core.jobs.tag_cache``). A new description of a model gives the catalogue a new version
(``core.jobs.catalogue``). Only the commit publishes, so a stream never hears of a change it
cannot read yet, and a rolled-back change is never announced. Best effort: a stream also re-reads its
job on a bounded poll, so a lost notification delays an event, never loses it.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from core.jobs.tag_cache import count_changes
from core.redis_sync import client_for
from core.settings import get_settings

log = logging.getLogger(__name__)

_CHANGED = "skipstep_changed_jobs"
_QUEUES = "skipstep_changed_queues"
_CATALOGUE = "skipstep_changed_catalogue"
# A random token, new at every change: unlike a counter, it never comes back after the broker lost its data.
CATALOGUE_VERSION = "skipstep:catalogue:version"
# After a failed publish, skip publishing this long: a worker's step check-ins must not wait on a down broker.
_BACKOFF_SECONDS = 5.0
_failed_at = 0.0


def channel(job_id: uuid.UUID) -> str:
    return f"skipstep:job:{job_id}"


def changed(session: Session, job_id: uuid.UUID, queue: str | None = None) -> None:
    """Announce ``job_id`` once ``session`` commits; ``queue``: the model whose queue it entered or left."""
    session.info.setdefault(_CHANGED, set()).add(job_id)
    if queue is not None:
        queue_changed(session, queue)


def queue_changed(session: Session, model: str) -> None:
    """Announce that ``model``'s queue changed (its queued jobs' standing) once ``session`` commits."""
    session.info.setdefault(_QUEUES, set()).add(model)


def catalogue_changed(session: Session) -> None:
    """Give the model catalogue a new version once ``session`` commits."""
    session.info[_CATALOGUE] = True


def publish(job_ids: set[uuid.UUID], queues: set[str], catalogue: bool = False) -> None:
    global _failed_at
    url = get_settings().broker_url
    if url is None or time.monotonic() - _failed_at < _BACKOFF_SECONDS:
        return
    try:
        with client_for(url).pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.publish(channel(job_id), "changed")
            count_changes(pipe, job_ids, queues)
            if catalogue:
                pipe.set(CATALOGUE_VERSION, uuid.uuid4().hex)
            pipe.execute()
    except redis.RedisError as exc:
        _failed_at = time.monotonic()
        log.warning("could not announce job changes on the broker (streams fall back to polling): %s", exc)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    job_ids, queues = session.info.pop(_CHANGED, set()), session.info.pop(_QUEUES, set())
    catalogue = session.info.pop(_CATALOGUE, False)
    if job_ids or queues or catalogue:
        publish(job_ids, queues, catalogue)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)
    session.info.pop(_QUEUES, None)
    session.info.pop(_CATALOGUE, None)
