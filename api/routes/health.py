"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from api.deps import MetricsReader, SessionDep, SettingsDep, StorageDep
from api.errors import ErrorResponse
from api.metrics import dependency_registry, registry_for
from core import health

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
    """Liveness: the process is up and answers. It checks nothing else, so that a dependency's outage never
    gets the process restarted."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: Literal["ready", "not ready"] = Field(
        description="`ready` when the database answers: the process can accept jobs.", examples=["ready"]
    )
    checks: dict[str, str] = Field(
        description="database, broker and storage: `ok` or `unreachable` (why: in the logs); the broker "
        "`not configured` when there is none. Only the database decides readiness: without the broker or the "
        "storage a submit still commits its job, which runs once they are back.",
        examples=[{"database": "ok", "broker": "unreachable", "storage": "ok"}],
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "The database is unreachable: the process cannot accept jobs.",
            "content": {
                "application/json": {
                    "example": {
                        "status": "not ready",
                        "checks": {"database": "unreachable", "broker": "ok", "storage": "ok"},
                    }
                }
            },
        }
    },
)
def readyz(session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Any:
    """Readiness: the database answers (200), or not (503). The broker's and the storage's states are reported
    without taking the process out of service; which dependency is down is named, why only in the logs."""
    checks = health.report(session, settings.broker_url, storage)
    ready = checks["database"] == health.OK
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=code)


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[MetricsReader],
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"example": METRICS_EXAMPLE}},
            "description": "Prometheus text exposition.",
        },
        503: {"model": ErrorResponse, "description": "The database is unreachable right now."},
    },
)
def metrics(session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Response:
    """Prometheus exposition: jobs by status, queue depth, step time and speedup by strategy; per model: queue
    depth, live and idle workers, wait, denoise time, speedup and jobs per strategy; whether each dependency
    answers. Open to the addresses SKIPSTEP_METRICS_ALLOW lists (loopback by default) and to the bearer token
    SKIPSTEP_METRICS_TOKEN."""
    registry = registry_for(settings.database, tuple(settings.model_sources), settings.heartbeat_seconds)
    checks = health.report(session, settings.broker_url, storage)
    body = generate_latest(registry) + generate_latest(dependency_registry(checks))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
