"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any, Literal

import redis
from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from api.deps import SessionDep, SettingsDep, StorageDep
from api.errors import ErrorResponse
from api.metrics import registry_for
from core.storage import StorageError

log = logging.getLogger("skipstep.api")
router = APIRouter(tags=["health"])

METRICS_EXAMPLE = """# HELP skipstep_jobs Jobs by status.
# TYPE skipstep_jobs gauge
skipstep_jobs{status="queued"} 4.0
skipstep_jobs{status="running"} 1.0
skipstep_jobs{status="succeeded"} 42.0
# HELP skipstep_queue_depth Jobs waiting for a worker.
# TYPE skipstep_queue_depth gauge
skipstep_queue_depth 4.0
"""


@router.get("/healthz", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: Literal["ready", "not ready"] = Field(description="`ready` when every check is `ok`.", examples=["ready"])
    checks: dict[str, str] = Field(
        description="database, broker and storage: `ok` or `unreachable` (why: in the logs); the broker "
        "`not configured` when there is none.",
        examples=[{"database": "ok", "broker": "ok", "storage": "ok"}],
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "A dependency is unreachable; `checks` says which.",
            "content": {
                "application/json": {
                    "example": {
                        "status": "not ready",
                        "checks": {"database": "ok", "broker": "unreachable", "storage": "ok"},
                    }
                }
            },
        }
    },
)
def readyz(session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Any:
    """Database, broker and storage are all reachable. Which one is not is named; why, only in the logs."""
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readyz: database unreachable: %s", exc.__class__.__name__)
        checks["database"] = "unreachable"
    try:
        if settings.broker_url is None:
            checks["broker"] = "not configured"
        else:
            redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2).ping()
            checks["broker"] = "ok"
    except redis.RedisError as exc:
        log.warning("readyz: broker unreachable: %s", exc)
        checks["broker"] = "unreachable"
    try:
        storage.check()
        checks["storage"] = "ok"
    except StorageError as exc:
        log.warning("readyz: storage unreachable: %s", exc)
        checks["storage"] = "unreachable"
    ready = all(value == "ok" for value in checks.values())
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=code)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"example": METRICS_EXAMPLE}},
            "description": "Prometheus text exposition.",
        },
        503: {"model": ErrorResponse, "description": "The database is unreachable right now."},
    },
)
def metrics(settings: SettingsDep) -> Response:
    """Prometheus exposition: jobs by status, queue depth, step time and speedup by strategy; per model: queue
    depth, live and idle workers, wait, denoise time, speedup and jobs per strategy."""
    registry = registry_for(settings.database, tuple(settings.model_sources), settings.heartbeat_seconds)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
