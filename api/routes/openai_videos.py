"""OpenAI's videos API under ``/v1/videos``, over skipstep's jobs, so that the ``openai`` package works
unchanged (``OpenAI(base_url=".../v1", api_key=<skipstep key>)``).

What maps onto what:
- ``prompt`` is the job's prompt; ``model`` names one of the service's models (absent: the default one).
- ``size`` ``"WxH"`` is the job's width and height (each a multiple of 16).
- ``seconds`` is the clip's length: ``num_frames`` = the 4k+1 frames nearest ``seconds`` x fps, at the job's fps
  (16 unless the body gives ``fps``); the video reports ``(num_frames - 1) / fps`` seconds.
- skipstep's own fields ride in the same body (the ``openai`` client's ``extra_body``): ``cache``
  ({strategy, params, profile}), ``num_inference_steps``, ``seed``, ``negative_prompt``, ``guidance_scale``,
  ``fps``, ``compare``, ``webhook_url``, ``webhook_events``. ``input_reference`` is refused (text-to-video only).
- Statuses: queued -> ``queued``, running -> ``in_progress``, succeeded -> ``completed``, failed and canceled ->
  ``failed`` (error code ``canceled`` for the latter); ``progress`` is the percent of denoising steps done.
- ``DELETE`` cancels a queued or running job (``deleted: true``); a finished job is kept (``deleted: false``).
- Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, naming OpenAI's field
  (``size`` for width and height, ``seconds`` for frames).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from api.deps import KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import OPENAI_FIELDS, ApiError, OpenAIErrorResponse, openai_error_response
from api.limits import RoomForJob
from api.routes import jobs
from core.contract import examples
from core.contract.request import JobRequest
from core.db import ApiKey, Job, JobStatus
from core.jobs import repository
from core.jobs.view import JobView, job_view

router = APIRouter(prefix="/v1/videos", tags=["openai"])
NO_VIDEO: dict[int | str, dict[str, Any]] = {
    404: {"model": OpenAIErrorResponse, "description": "No such video for this API key (`after`: no such id)."}
}

SIZE = re.compile(r"(\d+)x(\d+)")
TEMPORAL_MULTIPLE = 4
STATUS = {
    JobStatus.queued: "queued",
    JobStatus.running: "in_progress",
    JobStatus.succeeded: "completed",
    JobStatus.failed: "failed",
    JobStatus.canceled: "failed",
}


class VideoError(BaseModel):
    code: str = Field(
        description="The job's error code (`timeout`, `generation_failed`, ...), or `canceled`.", examples=["canceled"]
    )
    message: str = Field(description="What happened, for people.", examples=["the job was canceled"])


class Video(BaseModel):
    id: str = Field(description="The skipstep job's id.", examples=[examples.JOB_ID])
    object: Literal["video"] = Field(default="video", description="Always `video`.", examples=["video"])
    created_at: int = Field(description="Unix seconds when it was submitted.", examples=[1748779200])
    completed_at: int | None = Field(
        description="Unix seconds when it completed; null unless `completed`.", examples=[1748779278]
    )
    expires_at: int | None = Field(default=None, description="Always null: videos do not expire.", examples=[None])
    model: str = Field(description="The skipstep model that runs it.", examples=[examples.MODEL])
    progress: int = Field(description="Percent of the denoising steps done; 100 once completed.", examples=[100])
    prompt: str = Field(description="The prompt.", examples=[examples.PROMPT])
    seconds: str = Field(description="Length of the clip: (num_frames - 1) / fps.", examples=["5"])
    size: str = Field(description="WIDTHxHEIGHT in pixels.", examples=["832x480"])
    status: Literal["queued", "in_progress", "completed", "failed"] = Field(
        description="queued, in_progress, completed, or failed (a failed or canceled job).", examples=["completed"]
    )
    error: VideoError | None = Field(description="Why it failed; null unless `failed`.")
    remixed_from_video_id: str | None = Field(
        default=None, description="Always null: remixes are not supported.", examples=[None]
    )


class VideoList(BaseModel):
    object: Literal["list"] = Field(default="list", description="Always `list`.", examples=["list"])
    data: list[Video] = Field(description="This page's videos, newest first.")
    first_id: str | None = Field(description="The first video's id; null on an empty page.", examples=[examples.JOB_ID])
    last_id: str | None = Field(
        description="The last video's id, `after` for the next page; null on an empty page.",
        examples=[examples.JOB_ID],
    )
    has_more: bool = Field(description="Another page follows.", examples=[False])


class VideoDeleted(BaseModel):
    id: str = Field(description="The video's id.", examples=[examples.JOB_ID])
    object: Literal["video.deleted"] = Field(
        default="video.deleted", description="Always `video.deleted`.", examples=["video.deleted"]
    )
    deleted: bool = Field(
        description="true: its job was queued or running and is canceled; false: it had finished and is kept.",
        examples=[True],
    )


class Invalid(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def video(view: JobView) -> Video:
    error = VideoError(code=view.error.code, message=view.error.message) if view.error else None
    if view.status == JobStatus.canceled:
        error = VideoError(code="canceled", message="the job was canceled")
    done = view.status == JobStatus.succeeded
    return Video(
        id=str(view.id),
        created_at=int(view.created_at.timestamp()),
        completed_at=int(view.finished_at.timestamp()) if view.finished_at and done else None,
        model=view.model,
        progress=100 if done else int(view.progress.percent) if view.progress else 0,
        prompt=view.input.prompt,
        seconds=f"{(view.input.num_frames - 1) / view.input.fps:g}",
        size=f"{view.input.width}x{view.input.height}",
        status=STATUS[view.status],
        error=error,
    )


async def _body(request: Request) -> dict[str, Any]:
    """The request's fields, from JSON or from a form (the ``openai`` client sends multipart, with nested
    ``extra_body`` fields flattened as ``cache[params][threshold]``)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError as exc:
            raise Invalid("body", "is not valid JSON") from exc
        if not isinstance(body, dict):
            raise Invalid("body", "must be a JSON object")
        return body
    form = await request.form()
    fields: dict[str, Any] = {}
    for name in form:
        values = [value for value in form.getlist(name) if isinstance(value, str)]
        if len(values) != len(form.getlist(name)):
            raise Invalid(name.split("[")[0], "file uploads are not supported")
        path = name.removesuffix("[]").replace("]", "").split("[")
        if len(path) > 1:
            # A nested field (extra_body's cache params, say) lost its JSON type in the form: 0.2 came as "0.2".
            values = [_json_value(value) for value in values]
        target = fields
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = values if name.endswith("[]") else values[-1]
    return fields


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _job_body(fields: dict[str, Any]) -> JobRequest:
    body = dict(fields)
    if body.pop("input_reference", None) is not None:
        raise Invalid("input_reference", "is not supported: this service generates from text only")
    size = body.pop("size", None)
    if size is not None:
        match = SIZE.fullmatch(str(size))
        if match is None:
            raise Invalid("size", "must be WIDTHxHEIGHT, e.g. 832x480")
        body["width"], body["height"] = int(match[1]), int(match[2])
    seconds = body.pop("seconds", None)
    if seconds is not None:
        try:
            length = float(seconds)
        except ValueError as exc:
            raise Invalid("seconds", "must be a number of seconds") from exc
        if not 0 < length <= 60:
            raise Invalid("seconds", "must be more than 0 and at most 60")
        fps = int(body.get("fps") or JobRequest.model_fields["fps"].default)
        body["num_frames"] = TEMPORAL_MULTIPLE * round(length * fps / TEMPORAL_MULTIPLE) + 1
    try:
        return JobRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "body"
        param = OPENAI_FIELDS.get(field, ".".join(str(part) for part in error["loc"]) or "body")
        raise Invalid(param, str(error["msg"]).removeprefix("Value error, ")) from exc


def _found(session: SessionDep, video_id: uuid.UUID, key: ApiKey) -> Job:
    job = repository.get(session, video_id, key)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"video {video_id} not found")
    return job


def _as_openai(result: Any) -> Any:
    """A skipstep route's answer, its errors reshaped as OpenAI's."""
    if isinstance(result, JSONResponse) and result.status_code >= 400:
        error = json.loads(result.body)["error"]
        field = (error.get("fields") or [{}])[0].get("field")
        return openai_error_response(result.status_code, error["message"], OPENAI_FIELDS.get(field, field))
    return video(result)


@router.post(
    "",
    response_model=Video,
    responses={400: {"model": OpenAIErrorResponse, "description": "A field breaks a rule; `param` names it."}},
)
async def create(
    request: Request,
    key: KeyDep,
    room: RoomForJob,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a video (a skipstep job): JSON or multipart form, as the `openai` client sends it."""
    try:
        body = _job_body(await _body(request))
    except Invalid as exc:
        return openai_error_response(status.HTTP_400_BAD_REQUEST, str(exc), exc.param)
    return _as_openai(jobs.submit(body, key, room, session, settings, response, idempotency_key))


@router.get("", response_model=VideoList, responses=NO_VIDEO)
def list_videos(
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    after: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["desc"] = "desc",
) -> Any:
    """Newest first (`order=desc` only); `after` is the last id of the previous page."""
    cursor = None
    if after is not None:
        last = _found(session, after, key)
        cursor = repository.encode_cursor(last.created_at, last.id)
    page = repository.page(session, key, cursor=cursor, limit=limit)
    data = [video(job_view(job, settings.public_url)) for job in page.jobs]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.next_cursor is not None,
    )


@router.get("/{video_id}", response_model=Video, responses=NO_VIDEO)
def retrieve(video_id: uuid.UUID, key: KeyDep, session: SessionDep, settings: SettingsDep) -> Any:
    return video(jobs.get_job(video_id, key, session, settings))


@router.delete("/{video_id}", response_model=VideoDeleted, responses=NO_VIDEO)
def delete(video_id: uuid.UUID, key: KeyDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Cancels a queued or running job; a finished job is kept and answers `deleted: false`."""
    job = _found(session, video_id, key)
    canceled = None if job.status.finished else jobs.cancel_job(session, job.id, settings)
    return VideoDeleted(id=str(job.id), deleted=canceled is not None)


@router.get(
    "/{video_id}/content",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}}, 307: {"description": "Redirect to the MP4 (S3 storage)."}}
    | NO_VIDEO,
)
def content(
    video_id: uuid.UUID,
    key: KeyDep,
    session: SessionDep,
    storage: StorageDep,
    variant: Literal["video"] = "video",
) -> Any:
    """The MP4 (`variant=video`; thumbnails and spritesheets are not made)."""
    return jobs.video(video_id, key, session, storage)
