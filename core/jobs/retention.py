"""A job's lifetime: when its stored objects expire (its key's retention after it finished, or at once when it is
deleted), and deleting them.

Crash safety comes from the order of the two writes. The objects are deleted first and the row is marked
(``expired_at``) after; a job is expired for clients from ``expires_at`` on, marked or not. A crash between the
two leaves a job that reads expired and is still due, and the next sweep deletes again (nothing is left: a no-op)
and marks it. Only finished jobs are swept: a job asked to be deleted while it runs is left until it ends, so
nothing is deleted while a worker still writes it (a worker that lost its claim deletes its own attempt's upload,
``worker.runner``). Every sweeper may run at once: deleting twice is harmless and the mark is a guarded UPDATE.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, literal, or_, select, update
from sqlalchemy.orm import Session

from core.db import ApiKey, Job, JobStatus, session_scope, utcnow
from core.db.models import UTCDateTime
from core.jobs import notify
from core.settings import get_settings
from core.storage import Storage, StorageError, job_prefixes

log = logging.getLogger("skipstep.retention")

FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def expiry(session: Session, job_id: uuid.UUID, finished_at: datetime) -> Any:
    """The ``expires_at`` a job gets as it finishes, as a SQL value: a time set earlier (a delete request)
    stands; else its key's retention (``api_keys.retention_hours``, else SKIPSTEP_RETENTION_HOURS; 0: never)."""
    hours = session.scalar(select(ApiKey.retention_hours).join(Job, Job.owner_id == ApiKey.id).where(Job.id == job_id))
    if hours is None:
        hours = get_settings().retention_hours
    expires = finished_at + timedelta(hours=hours) if hours > 0 else None
    return func.coalesce(Job.expires_at, literal(expires, UTCDateTime()))


def is_expired(job: Job, now: datetime | None = None) -> bool:
    """Whether the job's objects are gone for clients: deleted, or due (the sweep may not have run yet)."""
    if job.expired_at is not None:
        return True
    return job.status.finished and job.expires_at is not None and job.expires_at <= (now or utcnow())


def request_delete(session: Session, job_id: uuid.UUID) -> None:
    """Make the job's objects due now (kept until it ends if it still runs); the caller commits."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, or_(Job.expires_at.is_(None), Job.expires_at > now))
        .values(expires_at=now, version=Job.version + 1)
        .execution_options(synchronize_session=False)
    )
    notify.changed(session, job_id)


def expire(database: str, storage: Storage, job_id: uuid.UUID) -> bool:
    """Delete a due, finished job's objects, then mark it expired; whether it is expired now (False: not due, or
    not finished). Raises StorageError if the store refused: the job stays due for the next try."""
    with session_scope(database) as session:
        job = session.get(Job, job_id)
        if job is None or not is_expired(job):
            return False
        if job.expired_at is not None:
            return True
    for prefix in job_prefixes(job_id):
        storage.delete_prefix(prefix)
    with session_scope(database) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.expired_at.is_(None))
            .values(expired_at=utcnow(), version=Job.version + 1)
            .execution_options(synchronize_session=False)
        )
        notify.changed(session, job_id)
    return True


def due(session: Session, limit: int = 100) -> list[uuid.UUID]:
    """Finished jobs whose objects are due for deletion and not deleted yet, oldest first."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.expired_at.is_(None), Job.expires_at <= utcnow(), Job.status.in_(FINISHED))
            .order_by(Job.expires_at)
            .limit(limit)
        )
    )


def sweep(database: str, storage: Storage, limit: int = 100) -> int:
    """Delete the objects of up to ``limit`` due jobs; how many were expired. A job the store refuses stays due."""
    with session_scope(database) as session:
        job_ids = due(session, limit)
    expired = 0
    for job_id in job_ids:
        try:
            expired += expire(database, storage, job_id)
        except StorageError as exc:
            log.warning("job %s: its objects could not be deleted now (%s); the next sweep tries again", job_id, exc)
    return expired


@dataclass(frozen=True)
class KeyStorage:
    """What one API key keeps in storage: its jobs' videos not expired yet."""

    name: str
    videos: int
    bytes: int
    retention_hours: float | None


def storage_by_key(session: Session) -> list[KeyStorage]:
    """Stored videos per API key, the largest first (``retention_hours`` None: the global setting)."""
    rows = session.execute(
        select(ApiKey.name, ApiKey.retention_hours, func.count(Job.id), func.coalesce(func.sum(Job.video_bytes), 0))
        .join(Job, Job.owner_id == ApiKey.id)
        .where(Job.video_key.is_not(None), Job.expired_at.is_(None), Job.status == JobStatus.succeeded)
        .group_by(ApiKey.id, ApiKey.name, ApiKey.retention_hours)
        .order_by(func.sum(Job.video_bytes).desc())
    ).all()
    return [KeyStorage(name, int(videos), int(size), hours) for name, hours, videos, size in rows]
