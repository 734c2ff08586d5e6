"""Worker rows: each worker process says who it is, what it runs and that it is alive."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

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


# A worker renews last_seen_at every heartbeat; this many missed beats and it counts as gone.
ALIVE_HEARTBEATS = 3


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    hostname: str
    pid: int
    model: str
    device: str
    current_job_id: uuid.UUID | None
    jobs_done: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    alive: bool


def statuses(session: Session, heartbeat_seconds: float, limit: int = 100) -> list[WorkerStatus]:
    """Workers seen most recently first, each with whether it is alive now."""
    cutoff = utcnow() - ALIVE_HEARTBEATS * timedelta(seconds=heartbeat_seconds)
    rows = session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit))
    return [
        WorkerStatus(
            id=worker.id,
            hostname=worker.hostname,
            pid=worker.pid,
            model=worker.model,
            device=worker.device,
            current_job_id=worker.current_job_id,
            jobs_done=worker.jobs_done,
            started_at=worker.started_at,
            last_seen_at=worker.last_seen_at,
            stopped_at=worker.stopped_at,
            alive=worker.stopped_at is None and worker.last_seen_at >= cutoff,
        )
        for worker in rows
    ]
