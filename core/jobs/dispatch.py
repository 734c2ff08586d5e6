"""What runs next is decided here, in the database; the broker only carries the ids chosen.

Fair share: a model's queued jobs are taken round-robin across API keys. Each key's jobs are
ranked by priority, then age; a key's running jobs count toward its turn, so a key with a job on
a GPU waits behind a key with none; among equal turns, the key whose last job started longest ago
goes first. The queue order is (turn, key last served, submitted, id), and a job's queue position
is its place in that order among its model's queued jobs.

Dispatch sends the next jobs in that order to the model's queue, only as many as the model has
idle live workers, so the broker never holds a backlog: a job submitted later by another key
still gets the next free worker, and a broker that loses its data loses at most those few ids,
which are sent again once they have waited ``redispatch_seconds`` unclaimed. Duplicates are
harmless: a claim takes only a queued job.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, and_, false, func, select, update
from sqlalchemy.orm import Session

from core.db import Job, JobStatus, KeyTurn, utcnow
from core.jobs import workers


def _queue(model: str) -> Select:
    """The model's queued jobs with their turn (1: the key's next job, counting its running ones) and when
    their key was last served on this model."""
    running = (
        select(Job.owner_id, func.count().label("running"))
        .where(Job.model == model, Job.status == JobStatus.running)
        .group_by(Job.owner_id)
        .subquery()
    )
    turn = func.row_number().over(
        partition_by=Job.owner_id, order_by=(Job.priority.desc(), Job.created_at, Job.id)
    ) + func.coalesce(running.c.running, 0)
    return (
        select(Job.id, Job.created_at, Job.dispatched_at, turn.label("turn"), KeyTurn.last_started_at.label("served"))
        .outerjoin(running, running.c.owner_id == Job.owner_id)
        .outerjoin(KeyTurn, and_(KeyTurn.owner_id == Job.owner_id, KeyTurn.model == model))
        .where(Job.model == model, Job.status == JobStatus.queued)
    )


def _fair(queue: Any) -> tuple[Any, ...]:
    """The queue order: by turn; among equal turns the key served longest ago (or never) first."""
    return (queue.c.turn, queue.c.served.asc().nulls_first(), queue.c.created_at, queue.c.id)


def queue_position(session: Session, job: Job) -> int | None:
    """1 for the job a worker of its model takes next; None if the job is not queued."""
    queue = _queue(job.model).subquery()
    order = select(queue.c.id, func.row_number().over(order_by=_fair(queue)).label("position")).subquery()
    return session.scalar(select(order.c.position).where(order.c.id == job.id))


def _serialize(session: Session, model: str) -> None:
    """Hold the model's dispatch lock until the transaction ends, so two dispatchers do not both fill
    the same free slots."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(zlib.crc32(f"skipstep.dispatch.{model}".encode()))))
    else:
        # SQLite has one writer at a time: a write statement, even one that matches nothing, takes the lock.
        session.execute(update(Job).where(false()).values(model=Job.model))


def _free_slots(session: Session, model: str, heartbeat_seconds: float) -> int:
    """Idle live workers of the model without a job already on its way to them."""
    in_flight = session.scalar(
        select(func.count()).where(Job.model == model, Job.status == JobStatus.queued, Job.dispatched_at.isnot(None))
    )
    return workers.idle_count(session, model, heartbeat_seconds) - (in_flight or 0)


def take_next(session: Session, model: str, heartbeat_seconds: float) -> Sequence[uuid.UUID]:
    """Mark the next jobs in fair order as dispatched, as many as ``model`` has idle workers without a
    job on its way; the caller sends their ids to the model's queue once this transaction commits."""
    if _free_slots(session, model, heartbeat_seconds) <= 0:
        return []  # the usual case under load, every worker busy: no lock taken
    _serialize(session, model)
    slots = _free_slots(session, model, heartbeat_seconds)
    if slots <= 0:
        return []
    queue = _queue(model).subquery()
    ids = session.scalars(
        select(queue.c.id).where(queue.c.dispatched_at.is_(None)).order_by(*_fair(queue)).limit(slots)
    ).all()
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.queued)
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids


def undispatch(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Their messages could not be sent: let the next dispatch send them."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.queued)
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )


def reset_stale(session: Session, older_than: timedelta) -> int:
    """Queued jobs sent long enough ago that their message must be lost (the broker restarted empty, say):
    mark them unsent, so that dispatch sends them again."""
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.queued, Job.dispatched_at < utcnow() - older_than)
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def waiting_models(session: Session) -> list[str]:
    """Models with queued jobs."""
    return list(session.scalars(select(Job.model).where(Job.status == JobStatus.queued).distinct()))
