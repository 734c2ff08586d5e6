"""The worker processes, as they report themselves (admin key)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import AdminDep, SessionDep, SettingsDep
from core.jobs import workers

router = APIRouter(prefix="/workers", tags=["workers"])


class WorkerView(BaseModel):
    id: str
    alive: bool
    hostname: str
    pid: int
    model: str
    device: str
    current_job: uuid.UUID | None
    jobs_done: int
    started_at: datetime
    last_seen_at: datetime


@router.get("", response_model=list[WorkerView])
def list_workers(_admin: AdminDep, session: SessionDep, settings: SettingsDep) -> list[WorkerView]:
    """Workers seen most recently first; alive means heard from within three heartbeats."""
    listing = workers.listing(session, timedelta(seconds=3 * settings.heartbeat_seconds))
    return [
        WorkerView(
            id=worker.id,
            alive=alive,
            hostname=worker.hostname,
            pid=worker.pid,
            model=worker.model,
            device=worker.device,
            current_job=worker.current_job_id,
            jobs_done=worker.jobs_done,
            started_at=worker.started_at,
            last_seen_at=worker.last_seen_at,
        )
        for worker, alive in listing
    ]
