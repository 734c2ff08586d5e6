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
from api.limits import RoomForJob, size_refusal
from api.schemas import JobCreate, JobPage
from core.contract.models import default_shape
from core.db import ApiKey, Job, JobStatus
from core.jobs import dispatch, repository, transitions, workers
from core.jobs.view import JobView, job_view
from core.webhooks.addresses import UnresolvableHost, UnsafeWebhookURL, resolve_target
from worker import dispatcher
from worker.app import enqueue_delivery

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job for this API key."}}


def _found(session: SessionDep, job_id: uuid.UUID, key: ApiKey) -> Job:
    job = repository.get(session, job_id, key)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _view(session: SessionDep, job: Job, settings: SettingsDep) -> JobView:
    if job.status != JobStatus.queued:
        return job_view(job, settings.public_url)
    waiting = workers.live_models(session, settings.heartbeat_seconds).get(job.model, 0) == 0
    return job_view(job, settings.public_url, dispatch.queue_position(session, job), waiting_for_worker=waiting)


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
    body: JobCreate,
    key: KeyDep,
    _room: RoomForJob,
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

    fields = body.job_fields(default_shape(settings.model))
    refusal = size_refusal(key, settings, fields)
    if refusal is not None:
        return refusal
    job = Job(
        owner_id=key.id,
        model=settings.default_model,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        **fields,
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
        dispatcher.dispatch(settings, [job.model])
    except Exception:
        log.warning("job %s is saved but could not be dispatched now; a worker's sweep will send it", job.id)
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
    _found(session, job_id, key)
    outcome = transitions.cancel(session, job_id, settings.public_url)
    session.commit()
    if outcome is None:
        job = _found(session, job_id, key)
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} has already finished ({job.status.value})")
    if isinstance(outcome, transitions.Ended):
        enqueue_delivery(outcome.delivery)
        return _view(session, outcome.job, settings)
    return _view(session, outcome, settings)


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
