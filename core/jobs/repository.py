"""Reads of job rows: one job, a key's jobs page by page, counts. State changes are in
``core.jobs.transitions``, the fair queue order in ``core.jobs.dispatch``, the dashboard's reads in
``core.jobs.dashboard``, the row <-> request mapping in ``core.jobs.mapping``."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from core.db import ApiKey, Job, JobStatus


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
        if not text.isprintable():
            raise ValueError("a cursor's value is printable text")
        value = parse(text)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("a cursor's time has its UTC offset")
            # In range once converted to UTC, as the database compares it (0001-01-01T00:00:00+14:00 is not).
            value = value.astimezone(UTC)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError("a cursor's number is finite")
        return value, uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
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


def counts_by_status(session: Session) -> dict[JobStatus, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: 0 for status in JobStatus} | {status: count for status, count in rows}
