"""Worker rows: each worker process says who it is, what it runs and that it is alive."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db import Worker, utcnow


def register(session: Session, worker_id: str, hostname: str, pid: int, model: str, device: str) -> None:
    now = utcnow()
    worker = session.get(Worker, worker_id) or Worker(id=worker_id)
    worker.hostname, worker.pid, worker.model, worker.device = hostname, pid, model, device
    worker.started_at = worker.last_seen_at = now
    worker.current_job_id, worker.stopped_at, worker.jobs_done = None, None, 0
    session.add(worker)


def seen(session: Session, worker_id: str) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=utcnow()))


def set_current(session: Session, worker_id: str, job_id: uuid.UUID | None, done: bool = False) -> None:
    values: dict[str, object] = {"current_job_id": job_id, "last_seen_at": utcnow()}
    if done:
        values["jobs_done"] = Worker.jobs_done + 1
    session.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def stopped(session: Session, worker_id: str) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow(), current_job_id=None))


def listing(session: Session, alive_within: timedelta, limit: int = 100) -> Sequence[tuple[Worker, bool]]:
    """Workers seen most recently first, each with whether it is alive now."""
    cutoff = utcnow() - alive_within
    workers = session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit)).all()
    return [(worker, worker.stopped_at is None and worker.last_seen_at >= cutoff) for worker in workers]
