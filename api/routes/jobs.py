"""The job lifecycle over HTTP: submit, read, list, cancel, fetch the video."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.exc import IntegrityError

from api.deps import KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import ErrorResponse, FieldError, error_response
from api.schemas import JobCreate, JobPage
from core.contract.models import default_shape
from core.db import ApiKey, Job, JobStatus
from core.jobs import repository
from core.jobs.view import JobView, job_view
from core.webhooks.addresses import UnresolvableHost, UnsafeWebhookURL, resolve_target
from core.webhooks.events import event_for, record_event
from worker.app import enqueue_delivery, enqueue_job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job for this API key."}}


def _found(session: SessionDep, job_id: uuid.UUID, key: ApiKey) -> Job:
    job = repository.get(session, job_id, key)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _view(session: SessionDep, job: Job, settings: SettingsDep) -> JobView:
    position = repository.queue_position(session, job) if job.status == JobStatus.queued else None
    return job_view(job, settings.public_url, position)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses={
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with a different body."},
        422: {"model": ErrorResponse, "description": "A field breaks a rule; each is named."},
    },
)
def submit(
    body: JobCreate,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a generation job. The row is committed before the job is queued, so nothing is lost."""
    if body.webhook_url is not None:
        try:
            resolve_target(body.webhook_url, settings.webhook_allow_private)
        except (UnsafeWebhookURL, UnresolvableHost) as exc:
            fields = [FieldError(field="webhook_url", rule=str(exc))]
            return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, f"webhook_url: {exc}", fields)

    fingerprint = body.fingerprint()
    if idempotency_key is not None:
        existing = repository.by_idempotency_key(session, key, idempotency_key)
        if existing is not None:
            return _replay(session, existing, fingerprint, settings, response)

    job = Job(
        owner_id=key.id,
        model=settings.default_model,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        **body.job_fields(default_shape(settings.model)),
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        session.rollback()
        existing = repository.by_idempotency_key(session, key, idempotency_key or "")
        if existing is None:
            raise
        return _replay(session, existing, fingerprint, settings, response)

    try:
        enqueue_job(job.id)
    except Exception:
        log.warning("job %s is saved but could not be queued now; a worker's sweep will queue it", job.id)
    else:
        repository.mark_enqueued(session, job.id)
        session.commit()
    response.headers["Location"] = f"/jobs/{job.id}"
    return _view(session, job, settings)


def _replay(session: SessionDep, job: Job, fingerprint: str, settings: SettingsDep, response: Response) -> Any:
    if job.request_hash != fingerprint:
        return error_response(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key was already used for job {job.id} with a different request body",
        )
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/jobs/{job.id}"
    return _view(session, job, settings)


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
    except repository.CursorError as exc:
        fields = [FieldError(field="cursor", rule="must be a next_cursor returned by this API")]
        return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, f"cursor: {exc}", fields)
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
    job = _found(session, job_id, key)
    canceled_now = job.status == JobStatus.queued and repository.cancel_queued(session, job.id)
    event = record_event(session, job, event_for(JobStatus.canceled), settings.public_url) if canceled_now else None
    if not canceled_now and job.status in (JobStatus.queued, JobStatus.running):
        # Still running, or claimed by a worker since it was read as queued.
        repository.request_cancel_running(session, job.id)
    session.commit()
    enqueue_delivery(event)
    session.refresh(job)
    if job.status.finished and not canceled_now:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} has already finished ({job.status.value})")
    return _view(session, job, settings)


@router.get(
    "/{job_id}/video",
    response_class=Response,
    responses=NOT_FOUND
    | {
        200: {"content": {"video/mp4": {}}, "description": "The MP4 (local storage)."},
        307: {"description": "Redirect to a time-limited URL of the MP4 (S3 storage)."},
    },
)
def video(job_id: uuid.UUID, key: KeyDep, session: SessionDep, storage: StorageDep) -> Any:
    job = _found(session, job_id, key)
    if job.status != JobStatus.succeeded or job.video_key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} has no video (status {job.status.value})")
    url = storage.presigned_url(job.video_key)
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    return FileResponse(storage.local_path(job.video_key), media_type="video/mp4", filename=f"{job.id}.mp4")
