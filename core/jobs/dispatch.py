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
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Integer, Select, and_, bindparam, false, func, or_, select, tuple_, union_all, update
from sqlalchemy.orm import Session

from core.db import Job, JobStatus, KeyTurn, QueueCount, Worker, utcnow
from core.jobs import workers


def _queue() -> Select:
    """The queued jobs of the model bound as ``model`` with their turn (1: the key's next job, counting its
    running ones) and when their key was last served on this model."""
    model = bindparam("model")
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


# Built once: composing these subqueries costs more Python time than running them on a short queue.
_QUEUE = _queue().subquery()
_NEXT = (
    select(_QUEUE.c.id)
    .where(_QUEUE.c.dispatched_at.is_(None))
    .order_by(*_fair(_QUEUE))
    .limit(bindparam("slots", type_=Integer))
)
# The queued jobs of the job's own key ahead of it.
_AHEAD_IN_KEY = select(func.count()).where(
    Job.owner_id == bindparam("owner"),
    Job.model == bindparam("model"),
    Job.status == JobStatus.queued,
    or_(
        Job.priority > bindparam("priority"),
        and_(
            Job.priority == bindparam("priority"),
            tuple_(Job.created_at, Job.id)
            < tuple_(bindparam("created_at", type_=Job.created_at.type), bindparam("job_id", type_=Job.id.type)),
        ),
    ),
)


def _workers(*conditions: Any) -> Any:
    seen_since = bindparam("alive_since", type_=Worker.last_seen_at.type)
    return workers.count_taking_jobs(bindparam("model"), seen_since, *conditions).scalar_subquery()


# Every key with jobs queued or running on the model bound as ``model`` (from the counts the triggers keep), with the
# jobs of the job's own key ahead of it and the model's workers: one statement, one row per key.
_PLACE = (
    select(
        QueueCount.owner_id,
        QueueCount.queued,
        QueueCount.running,
        QueueCount.latest_queued_at,
        KeyTurn.last_started_at.label("served"),
        _AHEAD_IN_KEY.scalar_subquery().label("ahead_in_key"),
        _workers().label("serving"),
        _workers(workers.IDLE).label("idle"),
    )
    .outerjoin(KeyTurn, and_(KeyTurn.owner_id == QueueCount.owner_id, KeyTurn.model == QueueCount.model))
    .where(QueueCount.model == bindparam("model"), or_(QueueCount.queued > 0, QueueCount.running > 0))
)


@lru_cache(maxsize=64)
def _tied_jobs(count: int) -> Any:
    """Per key i of ``count``, the queued job at place ``offset_i`` of key ``owner_i``'s order; built once per
    count, like the statements above."""
    rows = [
        select(Job.created_at, Job.id)
        .where(Job.owner_id == bindparam(f"owner_{i}"), Job.model == bindparam("model"), Job.status == JobStatus.queued)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .offset(bindparam(f"offset_{i}", type_=Integer))
        .limit(1)
        .subquery()
        for i in range(count)
    ]
    return union_all(*(select(row.c.created_at, row.c.id) for row in rows))


@dataclass(frozen=True)
class _KeyQueue:
    queued: int
    running: int
    served: datetime | None
    latest: datetime | None  # none of the key's queued jobs was created later


@dataclass(frozen=True)
class Place:
    """Where a job stands: its queue position (1: a worker of its model takes it next; None: not queued), and its
    model's live workers that take jobs and, of those, the ones holding none."""

    position: int | None
    serving: int = 0
    idle: int = 0


def place(session: Session, job: Job, heartbeat_seconds: float) -> Place:
    """The job's place in the fair order, without sorting the whole queue: its turn ``t`` is its rank among its key's
    queued jobs plus the key's running ones; every other key has min(queued, t - 1 - running) jobs at an earlier
    turn, and at most one at turn ``t``, ahead when its key was served earlier or, served alike, it is older. One
    statement reads each key's counts (``QueueCount``), the jobs of the job's key ahead of it and the model's workers;
    a second looks up the job at turn ``t`` of each tied key that has queued jobs newer than this one, if any (a
    newly submitted job has none)."""
    if job.status != JobStatus.queued:
        return Place(None)
    rows = session.execute(
        _PLACE,
        {
            "model": job.model,
            "owner": job.owner_id,
            "priority": job.priority,
            "created_at": job.created_at,
            "job_id": job.id,
            "alive_since": workers.alive_since(heartbeat_seconds),
        },
    ).all()
    keys = {row.owner_id: _KeyQueue(row.queued, row.running, row.served, row.latest_queued_at) for row in rows}
    mine = keys.pop(job.owner_id, None)
    if mine is None or mine.queued == 0:
        return Place(None)  # no longer queued: the row changed since it was read
    first = rows[0]
    return Place(_position(session, job, mine, keys, first.ahead_in_key), first.serving, first.idle)


def _position(
    session: Session, job: Job, mine: _KeyQueue, others: dict[uuid.UUID, _KeyQueue], ahead_in_key: int
) -> int:
    turn = ahead_in_key + 1 + mine.running
    position = ahead_in_key + 1
    tied = []
    for owner_id, other in others.items():
        position += min(max(turn - 1 - other.running, 0), other.queued)
        if not other.running < turn <= other.running + other.queued:
            continue  # no job of this key at the same turn
        if other.served == mine.served and other.latest is not None and other.latest < job.created_at:
            position += 1  # tied, and every job that key has queued is older than this one
        elif other.served == mine.served:
            tied.append((owner_id, turn - other.running - 1))
        elif other.served is None or (mine.served is not None and other.served < mine.served):
            position += 1
    if tied:
        values: dict[str, Any] = {"model": job.model}
        for index, (owner_id, offset) in enumerate(tied):
            values |= {f"owner_{index}": owner_id, f"offset_{index}": offset}
        for created_at, job_id in session.execute(_tied_jobs(len(tied)), values):
            position += (created_at, job_id) < (job.created_at, job.id)
    return position


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
    idle = workers.idle_count(session, model, heartbeat_seconds)
    if idle == 0:
        return 0  # every worker busy, the usual case under load: the jobs on their way need no count
    in_flight = session.scalar(
        select(func.count()).where(Job.model == model, Job.status == JobStatus.queued, Job.dispatched_at.isnot(None))
    )
    return idle - (in_flight or 0)


def next_in_line(session: Session, model: str, limit: int) -> Sequence[uuid.UUID]:
    """The model's queued jobs not yet sent to a worker, in fair order, at most ``limit``."""
    return session.scalars(_NEXT, {"model": model, "slots": limit}).all()


def take_next(session: Session, model: str, heartbeat_seconds: float) -> Sequence[uuid.UUID]:
    """Mark the next jobs in fair order as dispatched, as many as ``model`` has idle workers without a
    job on its way; the caller sends their ids to the model's queue once this transaction commits."""
    if _free_slots(session, model, heartbeat_seconds) <= 0:
        return []  # the usual case under load, every worker busy: no lock taken
    _serialize(session, model)
    slots = _free_slots(session, model, heartbeat_seconds)
    if slots <= 0:
        return []
    ids = next_in_line(session, model, slots)
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
