"""The job lifecycle over HTTP: submit, read, list, cancel, fetch the video, delete it."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import BROKER, KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError, ErrorResponse
from api.media import image_response, mp4_response
from api.schemas import JobPage
from core.contract.request import JobRequest
from core.db import ApiKey, Job, JobStatus
from core.jobs import polling, repository, service
from core.jobs.expected import standing
from core.jobs.remix import RemixRequest
from core.jobs.service import FirstFrame, Submitted
from core.jobs.view import JobView, job_view

router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job for this API key."}}


def _found(session: SessionDep, job_id: uuid.UUID, key: ApiKey) -> Job:
    job = repository.get(session, job_id, key)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _view(session: SessionDep, job: Job, settings: SettingsDep) -> JobView:
    return job_view(job, settings.public_url, standing(session, job, settings.heartbeat_seconds))


Submission = tuple[JobRequest, FirstFrame | None]
_JOB_SCHEMA = {"$ref": "#/components/schemas/JobRequest"}


async def job_submission(request: Request) -> Submission:
    """The job, validated as FastAPI validates a JSON body (its errors in the same form), and its first frame:
    ``image_url`` in the JSON, or an ``image`` file part beside a ``request`` part holding the JSON."""
    image = None
    text: str | bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        text, upload = form.get("request"), form.get("image")
        if not isinstance(text, str):
            raise ApiError.invalid("request", "a multipart submit holds the job as JSON in a `request` part")
        if upload is not None:
            if isinstance(upload, str):
                raise ApiError.invalid("image", "must be a file part (PNG, JPEG or WebP)")
            image = FirstFrame(data=await upload.read())
    else:
        text = await request.body()
    try:
        fields = json.loads(text)
    except ValueError as exc:
        error = {"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)), "msg": "JSON decode error"}
        raise RequestValidationError([error | {"input": {}, "ctx": {"error": str(exc)}}]) from None
    if isinstance(fields, dict) and fields.get("image_url") is not None:
        if image is not None:
            raise ApiError.invalid("image", "give an image file or image_url, not both")
        url = fields.pop("image_url")
        if not isinstance(url, str):
            raise ApiError.invalid("image_url", "must be a URL")
        image = FirstFrame(url=url)
    elif isinstance(fields, dict):
        fields.pop("image_url", None)
    try:
        return JobRequest.model_validate(fields), image
    except ValidationError as exc:
        raise RequestValidationError([error | {"loc": ("body", *error["loc"])} for error in exc.errors()]) from None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _JOB_SCHEMA},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["request"],
                        "properties": {
                            "request": {"type": "string", "description": "The job (JobRequest) as JSON."},
                            "image": {"type": "string", "format": "binary", "description": "The first frame."},
                        },
                    }
                },
            },
        }
    },
    responses={
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with a different body."},
        422: {"model": ErrorResponse, "description": "A field breaks a rule; each is named."},
        429: {"model": ErrorResponse, "description": "Too many requests, or too many jobs in flight for the key."},
    },
)
def submit(
    submission: Annotated[Submission, Depends(job_submission)],
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a generation job. Sizes are checked by the rules of the job's model family; the row is
    committed before the job is queued, so nothing is lost. An image-to-video model's first frame is an
    `image_url` in the JSON body, or an `image` file beside the job (JSON, in a `request` part) as
    multipart/form-data."""
    body, image = submission
    submitted = service.submit(session, key, body, settings, BROKER, idempotency_key, image=image, storage=storage)
    return _accepted(submitted, response, settings)


@router.post(
    "/{job_id}/remix",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses=NOT_FOUND
    | {
        409: {"model": ErrorResponse, "description": "The job has not succeeded, or Idempotency-Key reused."},
        422: {"model": ErrorResponse, "description": "A field breaks a rule; each is named."},
        429: {"model": ErrorResponse, "description": "Too many requests, or too many jobs in flight for the key."},
    },
)
def remix(
    job_id: uuid.UUID,
    body: RemixRequest,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a new job made from a succeeded one: the fields given replace the source's, every other one (seed
    and shape included) is kept; the new job's `remix_of` is the source. With `compare: true` its fidelity is
    measured against the source's frames."""
    source = _found(session, job_id, key)
    changes = body.model_dump(exclude_unset=True)
    submitted = service.remix(session, key, source, changes, settings, BROKER, storage, idempotency_key)
    return _accepted(submitted, response, settings)


def _accepted(submitted: Submitted, response: Response, settings: SettingsDep) -> JobView:
    """A queued job's answer: where it lives, and whether an earlier request with the same Idempotency-Key made it."""
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/jobs/{submitted.job.id}"
    return job_view(submitted.job, settings.public_url, submitted.standing)


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


@router.get(
    "/{job_id}",
    response_model=JobView,
    responses=NOT_FOUND
    | {304: {"description": "Not modified: the job still has the `If-None-Match` tag (after `wait`, if given)."}},
)
async def get_job(
    job_id: uuid.UUID,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            description="Long-poll: answer as soon as the job changes (from the `If-None-Match` state, else from "
            "its state now), or after this many seconds.",
        ),
    ] = 0,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Any:
    """The job, with an `ETag`. With `If-None-Match` holding that tag, an unchanged job answers 304 (no body).
    With `wait`, the answer waits for the job's next change: from the tagged state if `If-None-Match` is given,
    else from its state now; unchanged after `wait` seconds, 304 (tagged) or the job. A queued job carries
    `Retry-After`: when looking again is worthwhile."""
    seen = polling.seen_tags(if_none_match)

    def read() -> polling.Snapshot | None:
        snapshot = polling.read(session, job_id, key, settings, seen)
        session.commit()  # ended in this thread, the session closes without another hop; nothing is expired
        return snapshot

    snapshot = await anyio.to_thread.run_sync(read)
    if snapshot is not None and wait and not snapshot.finished and (snapshot.view is None or not seen):
        session.close()  # no pooled connection held while waiting
        snapshot = await polling.next_change(settings, job_id, key, snapshot.etag, wait, answer_unchanged=not seen)
    if snapshot is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    headers = {"ETag": snapshot.etag, "Cache-Control": "no-cache"}
    if snapshot.retry_after is not None:
        headers["Retry-After"] = str(snapshot.retry_after)
    if snapshot.view is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    response.headers.update(headers)
    return snapshot.view


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


@router.delete(
    "/{job_id}",
    response_model=JobView,
    responses=NOT_FOUND
    | {202: {"model": JobView, "description": "It still runs: canceled, its objects deleted once it stops."}},
)
def delete(
    job_id: uuid.UUID, key: KeyDep, session: SessionDep, settings: SettingsDep, storage: StorageDep, response: Response
) -> Any:
    """Delete the job's video (and inputs) from storage now; a queued or running job is canceled first, and its
    objects are deleted once it has stopped. The job stays, `expired`."""
    _found(session, job_id, key)
    if not service.delete(session, job_id, settings, storage, BROKER):
        response.status_code = status.HTTP_202_ACCEPTED
    session.expire_all()
    return _view(session, _found(session, job_id, key), settings)


@router.get(
    "/{job_id}/video",
    response_class=Response,
    responses={
        404: {"model": ErrorResponse, "description": "No such job for this API key, or it has no video (yet)."},
        410: {"model": ErrorResponse, "description": "The video expired or was deleted."},
        200: {"content": {"video/mp4": {}}, "description": "The MP4 (local storage)."},
        307: {"description": "Redirect to a time-limited URL of the MP4 (S3 storage)."},
    },
)
def video(job_id: uuid.UUID, key: KeyDep, session: SessionDep, storage: StorageDep) -> Any:
    return mp4_response(_found(session, job_id, key), storage)


@router.get(
    "/{job_id}/image",
    response_class=Response,
    responses={
        404: {"model": ErrorResponse, "description": "No such job for this API key, or it has no stored image."},
        200: {"content": {"image/png": {}}, "description": "The PNG (local storage)."},
        307: {"description": "Redirect to a time-limited URL of the PNG (S3 storage)."},
    },
)
def image(job_id: uuid.UUID, key: KeyDep, session: SessionDep, storage: StorageDep) -> Any:
    """The job's first frame as it was stored (PNG at the job's size): the file, or a redirect (S3)."""
    return image_response(_found(session, job_id, key), storage)
