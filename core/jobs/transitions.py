"""A job's life, in one place: ``queued -> running -> succeeded | failed | canceled``, and
``running -> queued`` only by a requeue (its worker's lease lapsed, or it was handed back at shutdown).

Every transition is one guarded UPDATE, so racing processes (the API, workers given the same
message, sweeps of several workers) cannot both win; attempts are counted at every claim; each
terminal transition records its webhook event in the same transaction, so an event is written
exactly when its status change is, once. Every change a client can see bumps ``jobs.version`` (the
job's event id) and is announced to its event streams once the caller commits (``core.jobs.notify``).
Callers commit, then send what the result names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.contract.jobs import EventType
from core.db import Job, JobRun, JobStatus, KeyTurn, utcnow
from core.jobs import notify, retention
from core.webhooks.events import record_event

WORKER_LOST = "worker_lost"
TIMEOUT = "timeout"


class RunOutcome:
    """How one claim of a job ended (``job_runs.outcome``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    # The worker stopped renewing its lease (it died or hung); the sweep took the job back.
    ABANDONED = "abandoned"
    # Stopped at shutdown and handed back: the attempt does not count.
    HANDED_BACK = "handed_back"
    # The worker found at a step boundary that it no longer held the job, and stopped writing.
    LOST = "lost"
    # The worker finished generating but no longer held the job: its result was dropped.
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Ended:
    """A job that reached a terminal status, and the webhook delivery to send for it (if any)."""

    job: Job
    delivery: uuid.UUID | None


@dataclass(frozen=True)
class Renewal:
    """The answer to a running job's per-step check-in."""

    cancel_requested: bool


@dataclass(frozen=True)
class Swept:
    """What a sweep changed: jobs put back in the queue, and webhook deliveries to send."""

    requeued: list[tuple[uuid.UUID, str, str | None]]  # (job, model, the worker that lost it)
    ended: list[tuple[uuid.UUID, JobStatus, str | None]]  # (job, status, the worker that lost it)
    deliveries: list[uuid.UUID]


def _mine(job_id: uuid.UUID, worker_id: str, attempt: int) -> Any:
    """The job as this worker's claim of it: a worker id alone is not enough, as a worker presumed dead (frozen,
    cut off) may come back after its job was requeued and claimed again, even by itself."""
    return and_(Job.id == job_id, Job.worker_id == worker_id, Job.attempts == attempt, Job.status == JobStatus.running)


def _end_run(session: Session, job_id: uuid.UUID, attempt: int, outcome: str) -> None:
    session.execute(
        update(JobRun)
        .where(JobRun.job_id == job_id, JobRun.attempt == attempt, JobRun.ended_at.is_(None))
        .values(ended_at=utcnow(), outcome=outcome)
    )


def _seen(session: Session, job_id: uuid.UUID, queue: str | None = None) -> dict[str, Any]:
    """The values that mark a visible change of the job: its version bumped, its streams told after commit (and
    ``queue``, the model whose queue it enters or leaves)."""
    notify.changed(session, job_id, queue)
    return {"version": Job.version + 1}


def _event(session: Session, job: Job, status: JobStatus, public_url: str) -> uuid.UUID | None:
    return record_event(session, job, EventType.on(status), public_url)


# -- the API's side ------------------------------------------------------------------------------


def cancel(session: Session, job_id: uuid.UUID, public_url: str) -> Ended | Job | None:
    """Cancel a job in one statement: a queued job ends canceled now (``Ended``); a running one is asked
    to stop at its next step (the job is returned); None if it had already finished."""
    now = utcnow()
    queued = Job.status == JobStatus.queued
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.queued, JobStatus.running)))
        .values(
            cancel_requested_at=func.coalesce(Job.cancel_requested_at, now),
            status=case((queued, JobStatus.canceled), else_=Job.status),
            finished_at=case((queued, now), else_=Job.finished_at),
            expires_at=case((queued, retention.expiry(session, job_id, now)), else_=Job.expires_at),
            **_seen(session, job_id),
        )
        .returning(Job.status, Job.model)
        .execution_options(synchronize_session=False)
    )
    row = result.first()
    if row is None:
        return None
    status, model = row
    job = session.get_one(Job, job_id, populate_existing=True)
    if status == JobStatus.canceled:
        notify.queue_changed(session, model)
        return Ended(job, _event(session, job, JobStatus.canceled, public_url))
    return job


# -- a worker's side -----------------------------------------------------------------------------


def claim(
    session: Session, job_id: uuid.UUID, worker_id: str, model: str, lease: timedelta, max_attempts: int
) -> Job | None:
    """Take a queued job of ``model`` for one attempt; None if it is not queued (finished, canceled, held by
    another worker) or has used up its attempts. A redelivered message for a running job is never claimed:
    only a sweep puts a job whose worker died back in the queue, so attempts are counted on one path."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.model == model,
            Job.status == JobStatus.queued,
            Job.cancel_requested_at.is_(None),
            Job.attempts < max_attempts,
        )
        .values(
            status=JobStatus.running,
            worker_id=worker_id,
            lease_expires_at=now + lease,
            started_at=now,
            progress_at=now,
            dispatched_at=None,
            attempts=Job.attempts + 1,
            **_seen(session, job_id, model),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.get_one(Job, job_id, populate_existing=True)
    session.add(JobRun(job_id=job_id, attempt=job.attempts, worker_id=worker_id, claimed_at=now))
    _served(session, job.owner_id, model, now)
    return job


def _served(session: Session, owner_id: uuid.UUID, model: str, now: datetime) -> None:
    """Record that the key had a job of ``model`` started: it goes to the back of the round-robin."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(KeyTurn)
        .values(owner_id=owner_id, model=model, last_started_at=now)
        .on_conflict_do_update(index_elements=["owner_id", "model"], set_={"last_started_at": now})
    )


def check_in(
    session: Session, job_id: uuid.UUID, worker_id: str, attempt: int, lease: timedelta, **progress: int | datetime
) -> Renewal | None:
    """Renew the lease of this worker's claim (``attempt``) of a running job, with any progress to record; None
    if it no longer holds that claim, in which case it must stop and write nothing more."""
    result = session.execute(
        update(Job)
        .where(_mine(job_id, worker_id, attempt))
        .values(lease_expires_at=utcnow() + lease, **progress, **(_seen(session, job_id) if progress else {}))
        .returning(Job.cancel_requested_at)
        .execution_options(synchronize_session=False)
    )
    row = result.first()
    return None if row is None else Renewal(cancel_requested=row[0] is not None)


def finish(
    session: Session,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    status: JobStatus,
    public_url: str,
    **values: Any,
) -> Ended | None:
    """Move this worker's claim (``attempt``) of a running job to its final status; None if it no longer holds it.

    A job whose cancel was requested while it finished ends canceled, not succeeded: an accepted cancel
    always ends the job canceled (its result is dropped)."""
    guard = _mine(job_id, worker_id, attempt)
    succeeded = status == JobStatus.succeeded and _set_final(
        session, job_id, and_(guard, Job.cancel_requested_at.is_(None)), status, values
    )
    if not succeeded:
        if status == JobStatus.succeeded:
            status, values = JobStatus.canceled, {}
        if not _set_final(session, job_id, guard, status, values):
            return None
    job = session.get_one(Job, job_id, populate_existing=True)
    _end_run(session, job_id, attempt, status.value)
    return Ended(job, _event(session, job, status, public_url))


def _set_final(session: Session, job_id: uuid.UUID, where: Any, status: JobStatus, values: dict[str, Any]) -> bool:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(where)
        .values(
            status=status,
            finished_at=now,
            lease_expires_at=None,
            expires_at=retention.expiry(session, job_id, now),
            **values,
            **_seen(session, job_id),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def hand_back(session: Session, job_id: uuid.UUID, worker_id: str, attempt: int) -> bool:
    """Put this worker's claim (``attempt``) of a running job back in the queue at once (the worker is shutting
    down); the attempt does not count against the job."""
    result = session.execute(
        update(Job)
        .where(_mine(job_id, worker_id, attempt))
        .values(
            status=JobStatus.queued,
            worker_id=None,
            lease_expires_at=None,
            dispatched_at=None,
            attempts=Job.attempts - 1,
            progress_step=0,
            computed_calls=0,
            skipped_calls=0,
            **_seen(session, job_id),
        )
        .returning(Job.model)
        .execution_options(synchronize_session=False)
    )
    model = result.scalar_one_or_none()
    if model is None:
        return False
    notify.queue_changed(session, model)
    _end_run(session, job_id, attempt, RunOutcome.HANDED_BACK)
    return True


def end_run(session: Session, job_id: uuid.UUID, attempt: int, outcome: str) -> None:
    """Record how a run that ended without a transition of its own ended (lost or superseded)."""
    _end_run(session, job_id, attempt, outcome)


# -- the sweep: jobs whose worker stopped renewing its lease ------------------------------------


def requeue_lapsed(session: Session, max_attempts: int, public_url: str, limit: int = 100) -> Swept:
    """Take back running jobs whose lease lapsed: canceled if a cancel was requested, failed as
    ``worker_lost`` once they have used their attempts, else queued again (attempts are counted when
    claimed). Each is one guarded UPDATE, so two sweeps never take the same job twice."""
    now = utcnow()
    lapsed = session.execute(
        select(Job.id, Job.model, Job.worker_id, Job.attempts, Job.cancel_requested_at)
        .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
        .limit(limit)
    ).all()
    swept = Swept([], [], [])
    for job_id, model, worker_id, attempts, cancel_requested_at in lapsed:
        still_lapsed = and_(
            Job.id == job_id, Job.status == JobStatus.running, Job.lease_expires_at < now, Job.attempts == attempts
        )
        status: JobStatus | None = None
        values: dict[str, Any] = {}
        if cancel_requested_at is not None:
            status = JobStatus.canceled
        elif attempts >= max_attempts:
            status = JobStatus.failed
            values = {
                "error_code": WORKER_LOST,
                "error_message": f"the worker running this job stopped responding on each of its {attempts} attempts",
            }
        if status is None:
            requeued = session.execute(
                update(Job)
                .where(still_lapsed, Job.cancel_requested_at.is_(None))
                .values(
                    status=JobStatus.queued,
                    worker_id=None,
                    lease_expires_at=None,
                    dispatched_at=None,
                    **_seen(session, job_id, model),
                )
                .execution_options(synchronize_session=False)
            )
            if requeued.rowcount == 1:
                _end_run(session, job_id, attempts, RunOutcome.ABANDONED)
                swept.requeued.append((job_id, model, worker_id))
            continue
        if _set_final(session, job_id, still_lapsed, status, values):
            _end_run(session, job_id, attempts, RunOutcome.ABANDONED)
            job = session.get_one(Job, job_id, populate_existing=True)
            delivery = _event(session, job, status, public_url)
            if delivery is not None:
                swept.deliveries.append(delivery)
            swept.ended.append((job_id, status, worker_id))
    return swept
