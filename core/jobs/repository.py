"""Every read and write of job rows. State changes are single guarded UPDATEs, so racing
processes (API and workers, or two workers given the same message) cannot both win."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from core.db import ApiKey, Job, JobStatus, utcnow


class CursorError(ValueError):
    """A pagination cursor that this service did not issue."""


@dataclass(frozen=True)
class Page:
    jobs: Sequence[Job]
    next_cursor: str | None


def visible_to(key: ApiKey) -> Any:
    """The WHERE clause of the jobs a key may see: its own, or all of them for an admin key."""
    return True if key.is_admin else Job.owner_id == key.id


def get(session: Session, job_id: uuid.UUID, key: ApiKey) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, visible_to(key)))


def by_idempotency_key(session: Session, owner: ApiKey, idempotency_key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))


def encode_cursor(value: datetime | float, job_id: uuid.UUID) -> str:
    """A keyset cursor: the sort value and the id of the last job shown."""
    text = value.isoformat() if isinstance(value, datetime) else repr(value)
    return base64.urlsafe_b64encode(f"{text}|{job_id}".encode()).decode()


def decode_cursor(cursor: str, parse: Callable[[str], Any] = datetime.fromisoformat) -> tuple[Any, uuid.UUID]:
    try:
        text, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return parse(text), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CursorError("not a cursor returned by this API for this order") from exc


def beyond(column: Any, cursor: tuple[Any, uuid.UUID], descending: bool) -> Any:
    """The jobs after the cursor in (column, id) order."""
    # The first conjunct alone is what an index range serves; the second breaks ties by id.
    value, job_id = cursor
    if descending:
        return and_(column <= value, or_(column < value, Job.id < job_id))
    return and_(column >= value, or_(column > value, Job.id > job_id))


def page(
    session: Session,
    key: ApiKey,
    *,
    status: JobStatus | None = None,
    strategy: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """Jobs newest first; ``cursor`` continues after the last job of the previous page."""
    query = select(Job).where(visible_to(key))
    if status is not None:
        query = query.where(Job.status == status)
    if strategy is not None:
        query = query.where(Job.cache_strategy == strategy)
    if cursor is not None:
        query = query.where(beyond(Job.created_at, decode_cursor(cursor), descending=True))
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return Page(jobs, encode_cursor(jobs[-1].created_at, jobs[-1].id) if more else None)


def queue_position(session: Session, job: Job) -> int:
    """1 for the next job a worker will take (jobs are taken oldest first)."""
    ahead = select(func.count()).where(Job.status == JobStatus.queued, Job.created_at < job.created_at)
    return (session.scalar(ahead) or 0) + 1


def mark_enqueued(session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow()))


def cancel_queued(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a job no worker has taken; False if it is no longer queued."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.canceled, cancel_requested_at=now, finished_at=now)
    )
    return result.rowcount == 1


def request_cancel_running(session: Session, job_id: uuid.UUID) -> bool:
    """Ask the worker running the job to stop at the next step; False if it is not running."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.cancel_requested_at.is_(None))
        .values(cancel_requested_at=utcnow())
    )
    return result.rowcount == 1


# Worker side. Every write after the claim is guarded by the claiming worker's id, so a worker
# whose lease lapsed (and whose job was taken over) cannot overwrite its successor's results.


def claim(session: Session, job_id: uuid.UUID, worker_id: str, lease: timedelta) -> Job | None:
    """Take a queued job, or a running one whose worker's lease has lapsed; None if it cannot be taken."""
    now = utcnow()
    claimable = or_(
        Job.status == JobStatus.queued,
        and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested_at.is_(None))
        .values(
            status=JobStatus.running,
            worker_id=worker_id,
            lease_expires_at=now + lease,
            started_at=func.coalesce(Job.started_at, now),
            attempts=Job.attempts + 1,
        )
    )
    if result.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def _mine(job_id: uuid.UUID, worker_id: str) -> Any:
    return and_(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.running)


def renew_lease(session: Session, job_id: uuid.UUID, worker_id: str, lease: timedelta) -> bool:
    result = session.execute(update(Job).where(_mine(job_id, worker_id)).values(lease_expires_at=utcnow() + lease))
    return result.rowcount == 1


def record_progress(session: Session, job_id: uuid.UUID, worker_id: str, **values: int) -> bool:
    result = session.execute(update(Job).where(_mine(job_id, worker_id)).values(**values))
    return result.rowcount == 1


def cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    return session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id)) is not None


def finish(session: Session, job_id: uuid.UUID, worker_id: str, status: JobStatus, **values: Any) -> Job | None:
    """Move a running job to its final status; None if this worker no longer holds it."""
    result = session.execute(
        update(Job)
        .where(_mine(job_id, worker_id))
        .values(status=status, finished_at=utcnow(), lease_expires_at=None, **values)
    )
    if result.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def unsent(session: Session, older_than: timedelta) -> Sequence[uuid.UUID]:
    """Queued jobs whose queue message was never sent (the broker was down when they were submitted)."""
    cutoff = utcnow() - older_than
    query = select(Job.id).where(Job.status == JobStatus.queued, Job.dispatched_at.is_(None), Job.created_at < cutoff)
    return session.scalars(query.limit(100)).all()


def lapsed(session: Session) -> Sequence[Job]:
    """Running jobs whose worker stopped renewing its lease: it crashed or lost its connection."""
    query = select(Job).where(Job.status == JobStatus.running, Job.lease_expires_at < utcnow())
    return session.scalars(query.limit(100)).all()


def requeue_lapsed(session: Session, job_id: uuid.UUID) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_expires_at < utcnow())
        .values(status=JobStatus.queued, worker_id=None, lease_expires_at=None, dispatched_at=None)
    )
    return result.rowcount == 1


def counts_by_status(session: Session) -> dict[JobStatus, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: 0 for status in JobStatus} | {status: count for status, count in rows}


def end_lapsed(session: Session, job_id: uuid.UUID, status: JobStatus, **values: Any) -> bool:
    """Finish a running job whose worker is gone (canceled meanwhile, or out of attempts)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_expires_at < now)
        .values(status=status, finished_at=now, lease_expires_at=None, **values)
    )
    return result.rowcount == 1
