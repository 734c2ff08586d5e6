"""Worker rows: each GPU worker process says who it is, which model it serves, on what device, and that
it is alive; a worker that stops saying so is marked gone by another worker's sweep."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import Select, and_, func, select, update
from sqlalchemy.orm import Session

from core.contract import examples
from core.db import Worker, utcnow
from core.jobs import notify

# A worker renews last_seen_at every heartbeat; this many missed beats and it counts as gone.
ALIVE_HEARTBEATS = 3
SHUTDOWN = "shutdown"
DRAINING = "draining"
GONE = "gone"
# Alive but not taking jobs yet: compiling its model's blocks and warming them up (core.models.compile).
WARMING = "warming"


@dataclass(frozen=True)
class Device:
    """The device a worker holds: its torch name in the process (``cuda:0``, ``cpu``), the accelerator's
    name, and the host's GPUs it was pinned to (``CUDA_VISIBLE_DEVICES``), which tell two workers'
    ``cuda:0`` apart."""

    name: str
    description: str | None = None
    visible_devices: str | None = None
    # A worker spanning several devices: each rank's device (rank 0's is ``name``) and how they share a job.
    group: tuple[str, ...] = ()
    parallelism: str | None = None

    def describe(self) -> str:
        """``cuda:0``, or ``cuda:0+cuda:1 (ulysses)`` for a worker spanning devices."""
        return f"{'+'.join(self.group)} ({self.parallelism})" if self.group else self.name


def register(
    session: Session, worker_id: str, hostname: str, pid: int, model: str, device: Device, warming: bool = False
) -> None:
    """A worker that starts; ``warming``: it takes no jobs until ``warm`` says it is ready."""
    now = utcnow()
    worker = session.get(Worker, worker_id) or Worker(id=worker_id)
    worker.hostname, worker.pid, worker.model = hostname, pid, model
    worker.device, worker.device_name, worker.visible_devices = device.name, device.description, device.visible_devices
    worker.devices, worker.parallelism = list(device.group) or None, device.parallelism
    worker.started_at = worker.last_seen_at = now
    worker.current_job_id, worker.stopped_at, worker.jobs_done = None, None, 0
    worker.stop_reason = WARMING if warming else None
    session.add(worker)
    notify.queue_changed(session, model)


def warm(session: Session, worker_id: str) -> None:
    """The worker has compiled and warmed up: it takes jobs (unless it began shutting down meanwhile)."""
    warmed = session.execute(
        update(Worker)
        .where(Worker.id == worker_id, Worker.stop_reason == WARMING)
        .values(stop_reason=None)
        .returning(Worker.model)
    )
    _serving_changed(session, warmed.scalars())


def seen(session: Session, worker_id: str, state: str | None = None) -> bool:
    """A heartbeat. A worker marked gone that beats again (it was frozen, or cut off from the database) is live
    again, in ``state`` (``WARMING``, ``DRAINING`` or None: taking jobs); True when it came back so. The job it
    held was requeued meanwhile, and its claim of that job is void (``core.jobs.transitions``)."""
    now = utcnow()
    session.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=now))
    back = (
        session.execute(
            update(Worker)
            .where(Worker.id == worker_id, Worker.stop_reason == GONE)
            .values(stopped_at=None, stop_reason=state, current_job_id=None)
            .returning(Worker.model)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    _serving_changed(session, back)
    return len(back) == 1


def set_current(session: Session, worker_id: str, job_id: uuid.UUID | None, done: bool = False) -> None:
    values: dict[str, object] = {"current_job_id": job_id, "last_seen_at": utcnow()}
    if done:
        values["jobs_done"] = Worker.jobs_done + 1
    session.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def draining(session: Session, worker_id: str) -> None:
    """The worker is shutting down: alive until it stops, but no more jobs are sent to it."""
    models = session.execute(
        update(Worker).where(Worker.id == worker_id).values(stop_reason=DRAINING).returning(Worker.model)
    )
    _serving_changed(session, models.scalars())


def stopped(session: Session, worker_id: str) -> None:
    models = session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=utcnow(), stop_reason=SHUTDOWN, current_job_id=None)
        .returning(Worker.model)
    )
    _serving_changed(session, models.scalars())


def _serving_changed(session: Session, models: Iterable[str]) -> None:
    """A worker started or stopped taking jobs: its model's queued jobs may no longer, or now, wait for one."""
    for model in models:
        notify.queue_changed(session, model)


def alive_since(heartbeat_seconds: float) -> datetime:
    """A worker last seen before this is gone."""
    return utcnow() - ALIVE_HEARTBEATS * timedelta(seconds=heartbeat_seconds)


def _alive(seen_since: Any) -> Any:
    return and_(Worker.stopped_at.is_(None), Worker.last_seen_at >= seen_since)


# A worker that holds no job (a condition for ``count_taking_jobs``).
IDLE = Worker.current_job_id.is_(None)


def count_taking_jobs(model: Any, seen_since: Any, *conditions: Any) -> Select:
    """How many workers of ``model`` are alive (seen since ``seen_since``), not shutting down (they take the model's
    next jobs) and meet ``conditions``. Either argument may be a bound parameter, for statements built once."""
    return select(func.count()).where(
        Worker.model == model, _alive(seen_since), Worker.stop_reason.is_(None), *conditions
    )


def idle_count(session: Session, model: str, heartbeat_seconds: float) -> int:
    """Live workers of ``model`` that hold no job and take new ones."""
    return session.scalar(count_taking_jobs(model, alive_since(heartbeat_seconds), IDLE)) or 0


def serving_count(session: Session, model: str, heartbeat_seconds: float) -> int:
    """Live workers of ``model`` that take new jobs (busy or idle, not shutting down)."""
    return session.scalar(count_taking_jobs(model, alive_since(heartbeat_seconds))) or 0


def waiting_for_worker(session: Session, model: str, heartbeat_seconds: float) -> bool:
    """Whether a queued job of ``model`` waits for a worker to start: no live worker of the model takes
    jobs (none runs, or every one is shutting down). Such a job stays queued and runs once one starts."""
    return serving_count(session, model, heartbeat_seconds) == 0


@dataclass(frozen=True)
class ModelWorkers:
    """A model's live workers: how many, how many of those hold no job and take one, how many are still warming
    up, each one's devices, and the devices they hold in all (a worker spanning several counts each)."""

    live: int
    idle: int
    devices: list[str]
    warming: int = 0
    device_count: int = 0


def by_model(session: Session, heartbeat_seconds: float) -> dict[str, ModelWorkers]:
    """Live workers per model (models without one are absent)."""
    rows = session.execute(
        select(
            Worker.model,
            Worker.hostname,
            Worker.device,
            Worker.visible_devices,
            Worker.devices,
            Worker.parallelism,
            Worker.current_job_id,
            Worker.stop_reason,
        )
        .where(_alive(alive_since(heartbeat_seconds)))
        .order_by(Worker.model, Worker.hostname, Worker.started_at)
    ).all()
    models: dict[str, ModelWorkers] = {}
    for model, hostname, device, visible, group, parallelism, job_id, reason in rows:
        current = models.get(model, ModelWorkers(0, 0, []))
        held = Device(device, group=tuple(group or ()), parallelism=parallelism)
        where = (
            f"{hostname}/{held.describe()}"
            + (f" (GPU {visible})" if visible else "")
            + (" warming" if reason == WARMING else "")
        )
        models[model] = ModelWorkers(
            current.live + 1,
            current.idle + (job_id is None and reason != WARMING),
            [*current.devices, where],
            current.warming + (reason == WARMING),
            current.device_count + max(len(held.group), 1),
        )
    return models


def mark_gone(session: Session, heartbeat_seconds: float) -> list[tuple[str, str, int]]:
    """Mark workers that stopped answering as gone; (id, hostname, pid) of each."""
    cutoff = alive_since(heartbeat_seconds)
    result = session.execute(
        update(Worker)
        .where(Worker.stopped_at.is_(None), Worker.last_seen_at < cutoff)
        .values(stopped_at=utcnow(), stop_reason=GONE, current_job_id=None)
        .returning(Worker.id, Worker.hostname, Worker.pid, Worker.model)
        .execution_options(synchronize_session=False)
    ).all()
    _serving_changed(session, {row.model for row in result})
    return [(row.id, row.hostname, row.pid) for row in result]


@dataclass(frozen=True)
class WorkerStatus:
    id: Annotated[str, Field(description="host:pid, as jobs name their worker.", examples=[examples.WORKER])]
    hostname: Annotated[str, Field(description="The host it runs on.", examples=[examples.HOSTNAME])]
    pid: Annotated[int, Field(description="Its process id on that host.", examples=[4127])]
    model: Annotated[
        str, Field(description="The model it serves (one queue, `generate.<model>`).", examples=[examples.MODEL])
    ]
    device: Annotated[str, Field(description="cpu, cuda, cuda:1, ...", examples=["cuda:0"])]
    device_name: Annotated[
        str | None,
        Field(
            description="The accelerator's name (e.g. NVIDIA H100); null on CPU.", examples=["NVIDIA H100 80GB HBM3"]
        ),
    ]
    visible_devices: Annotated[
        str | None,
        Field(
            description="The host's GPUs it was pinned to (CUDA_VISIBLE_DEVICES); null when unpinned.", examples=["0"]
        ),
    ]
    devices: Annotated[
        list[str],
        Field(
            description="A worker spanning several devices (`skipstep worker --gpus 0,1,...`): each rank's device, "
            "rank 0's first (`device`); empty for a worker on one device.",
            examples=[["cuda:0", "cuda:1"]],
        ),
    ]
    parallelism: Annotated[
        str | None,
        Field(
            description="How a worker spanning several devices shares each job: ulysses, ring or cfg; null for one "
            "device.",
            examples=["ulysses"],
        ),
    ]
    current_job_id: Annotated[
        uuid.UUID | None, Field(description="The job it is running; null when idle.", examples=[examples.JOB_ID])
    ]
    jobs_done: Annotated[int, Field(description="Jobs it has finished since it started.", examples=[17])]
    started_at: Annotated[datetime, Field(description="When it registered.", examples=["2025-06-01T08:30:00Z"])]
    last_seen_at: Annotated[datetime, Field(description="Its latest heartbeat.", examples=["2025-06-01T12:01:10Z"])]
    stopped_at: Annotated[
        datetime | None,
        Field(
            description="When it stopped: shut down, or marked gone by another worker; null while running.",
            examples=["2025-06-01T18:00:00Z"],
        ),
    ]
    stop_reason: Annotated[
        str | None,
        Field(
            description="`warming` while it compiles and warms up (it takes no jobs yet); `draining` while it shuts "
            "down, then `shutdown`; `gone` once marked as no longer answering; null while it takes jobs.",
            examples=["shutdown"],
        ),
    ]
    alive: Annotated[bool, Field(description="Heard from within three heartbeats.", examples=[True])]


def statuses(session: Session, heartbeat_seconds: float, limit: int = 100) -> list[WorkerStatus]:
    """Workers seen most recently first, each with whether it is alive now."""
    cutoff = alive_since(heartbeat_seconds)
    rows = session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit))
    return [
        WorkerStatus(
            id=worker.id,
            hostname=worker.hostname,
            pid=worker.pid,
            model=worker.model,
            device=worker.device,
            device_name=worker.device_name,
            visible_devices=worker.visible_devices,
            devices=worker.devices or [],
            parallelism=worker.parallelism,
            current_job_id=worker.current_job_id,
            jobs_done=worker.jobs_done,
            started_at=worker.started_at,
            last_seen_at=worker.last_seen_at,
            stopped_at=worker.stopped_at,
            stop_reason=worker.stop_reason,
            alive=worker.stopped_at is None and worker.last_seen_at >= cutoff,
        )
        for worker in rows
    ]
