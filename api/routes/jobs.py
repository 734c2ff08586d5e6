"""The job lifecycle over HTTP: submit, read, list, cancel, fetch the video."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.exc import IntegrityError

from api.deps import KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError, ErrorResponse
from api.limits import RoomForJob, size_refusal
from api.schemas import JobPage
from core.caching.profiles import ProfileStore
from core.contract.request import JobRequest
from core.db import ApiKey, Job, JobStatus
from core.jobs import catalogue, repository, transitions
from core.jobs.expected import expected, standing
from core.jobs.mapping import new_job
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
    _room: RoomForJob,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a generation job. Sizes are checked by the rules of the job's model family; the row is
    committed before the job is queued, so nothing is lost."""
    if body.webhook_url is not None:
        try:
            resolve_target(body.webhook_url, settings.webhook_allow_private)
        except (UnsafeWebhookURL, UnresolvableHost) as exc:
            raise ApiError.invalid("webhook_url", str(exc)) from None

    fingerprint = body.fingerprint()
    if idempotency_key is not None:
        existing = repository.by_idempotency_key(session, key, idempotency_key)
        if existing is not None:
            return _replay(session, existing, fingerprint, settings, response)

    model = body.model or settings.default_model
    info = catalogue.describe(session, model, settings)
    shape = body.shape(info.family, info.default_shape)
    info.check_cache(body.cache)
    refusal = size_refusal(key, settings, asdict(shape))
    if refusal is not None:
        return refusal
    figures = expected(session, body, shape, model, info, ProfileStore(settings.profiles_dir))
    job = new_job(
        body,
        shape,
        model,
        key.id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        expected=figures.model_dump(mode="json") if figures is not None else None,
        pending_checks=info.pending_checks(body.cache),
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
        raise ApiError(
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
    canceled = cancel_job(session, job_id, settings)
    if canceled is None:
        job = _found(session, job_id, key)
        raise ApiError(status.HTTP_409_CONFLICT, f"job {job.id} has already finished ({job.status.value})")
    return _view(session, canceled, settings)


def cancel_job(session: SessionDep, job_id: uuid.UUID, settings: SettingsDep) -> Job | None:
    """Cancel (or ask a running job to stop), committed, its webhook event sent; None if it had finished."""
    outcome = transitions.cancel(session, job_id, settings.public_url)
    session.commit()
    if isinstance(outcome, transitions.Ended):
        enqueue_delivery(outcome.delivery)
        return outcome.job
    return outcome


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
    job = _found(session, job_id, key)
    if job.status != JobStatus.succeeded or job.video_key is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job.id} has no video (status {job.status.value})")
    url = storage.presigned_url(job.video_key)
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    return FileResponse(storage.local_path(job.video_key), media_type="video/mp4", filename=f"{job.id}.mp4")
