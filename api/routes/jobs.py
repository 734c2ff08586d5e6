"""The job lifecycle over HTTP: submit, read, list, cancel, fetch the video."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from api.deps import BROKER, KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError, ErrorResponse
from api.media import mp4_response
from api.schemas import JobPage
from core.contract.request import JobRequest
from core.db import ApiKey, Job, JobStatus
from core.jobs import repository, service
from core.jobs.expected import standing
from core.jobs.view import JobView, job_view

router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job for this API key."}}


def _found(session: SessionDep, job_id: uuid.UUID, key: ApiKey) -> Job:
    job = repository.get(session, job_id, key)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _view(session: SessionDep, job: Job, settings: SettingsDep) -> JobView:
    queued = standing(session, job, settings.heartbeat_seconds)
    return job_view(
        job,
        settings.public_url,
        queued.position,
        waiting_for_worker=queued.waiting_for_worker,
        estimated_start_at=queued.estimated_start_at,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses={
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with a different body."},
        422: {"model": ErrorResponse, "description": "A field breaks a rule; each is named."},
        429: {"model": ErrorResponse, "description": "Too many requests, or too many jobs in flight for the key."},
    },
)
def submit(
    body: JobRequest,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a generation job. Sizes are checked by the rules of the job's model family; the row is
    committed before the job is queued, so nothing is lost."""
    submitted = service.submit(session, key, body, settings, BROKER, idempotency_key)
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/jobs/{submitted.job.id}"
    return _view(session, submitted.job, settings)


@router.get("", response_model=JobPage)
def list_jobs(
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    strategy: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Any:
    """Jobs newest first, filtered by status and cache strategy, one page at a time."""
    try:
        page = repository.page(session, key, status=status_, strategy=strategy, cursor=cursor, limit=limit)
    except repository.CursorError:
        raise ApiError.invalid("cursor", "must be a next_cursor returned by this API") from None
    return JobPage(jobs=[job_view(job, settings.public_url) for job in page.jobs], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobView, responses=NOT_FOUND)
def get_job(job_id: uuid.UUID, key: KeyDep, session: SessionDep, settings: SettingsDep) -> Any:
    return _view(session, _found(session, job_id, key), settings)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses=NOT_FOUND | {409: {"model": ErrorResponse, "description": "The job has already finished."}},
)
def cancel(job_id: uuid.UUID, key: KeyDep, session: SessionDep, settings: SettingsDep) -> Any:
    """A queued job is canceled at once; a running job stops at its next denoising step."""
    _found(session, job_id, key)
    canceled = service.cancel(session, job_id, settings, BROKER)
    if canceled is None:
        job = _found(session, job_id, key)
        raise ApiError(status.HTTP_409_CONFLICT, f"job {job.id} has already finished ({job.status.value})")
    return _view(session, canceled, settings)


@router.get(
    "/{job_id}/video",
    response_class=Response,
    responses={
        404: {"model": ErrorResponse, "description": "No such job for this API key, or it has no video (yet)."},
        200: {"content": {"video/mp4": {}}, "description": "The MP4 (local storage)."},
        307: {"description": "Redirect to a time-limited URL of the MP4 (S3 storage)."},
    },
)
def video(job_id: uuid.UUID, key: KeyDep, session: SessionDep, storage: StorageDep) -> Any:
    return mp4_response(_found(session, job_id, key), storage)
