"""The worker processes, as they report themselves (admin key)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep, SessionDep, SettingsDep
from core.jobs import workers
from core.jobs.workers import WorkerStatus

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=list[WorkerStatus])
def list_workers(_admin: AdminDep, session: SessionDep, settings: SettingsDep) -> list[WorkerStatus]:
    """Workers seen most recently first; alive means heard from within three heartbeats."""
    return workers.statuses(session, settings.heartbeat_seconds)
