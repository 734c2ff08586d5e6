"""OpenAI's videos API under ``/v1/videos``, over skipstep's jobs, so that the ``openai`` package works
unchanged (``OpenAI(base_url=".../v1", api_key=<skipstep key>)``).

What maps onto what:
- ``prompt`` is the job's prompt; ``model`` names one of the service's models (absent: the default one).
- ``size`` ``"WxH"`` is the job's width and height (each a multiple of 16).
- ``seconds`` is the clip's length: ``num_frames`` = the 4k+1 frames nearest ``seconds`` x fps, at the job's fps
  (16 unless the body gives ``fps``); the video reports ``(num_frames - 1) / fps`` seconds.
- skipstep's own fields ride in the same body (the ``openai`` client's ``extra_body``): ``cache``
  ({strategy, params, profile}), ``num_inference_steps``, ``seed``, ``negative_prompt``, ``guidance_scale``,
  ``fps``, ``compare``, ``webhook_url``, ``webhook_events``. ``input_reference`` is the first frame of an image-to-video
  model (an uploaded PNG, JPEG or WebP; in JSON, an image URL).
- ``POST /v1/videos/{id}/remix`` is skipstep's remix (``POST /jobs/{id}/remix``): ``remixed_from_video_id`` links it.
- Statuses: queued -> ``queued``, running -> ``in_progress``, succeeded -> ``completed``, failed and canceled ->
  ``failed`` (error code ``canceled`` for the latter); ``progress`` is the percent of denoising steps done.
- ``DELETE`` deletes the video from storage (a queued or running job is canceled first, and its objects deleted
  once it stops); the job stays, and its content answers 410. ``expires_at`` is when the video is deleted.
- Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, naming OpenAI's field
  (``size`` for width and height, ``seconds`` for frames).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from api.bodies import violations
from api.deps import BROKER, KeyDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError, OpenAIErrorResponse
from api.media import mp4_response
from core.contract import examples
from core.contract.request import JobRequest
from core.db import ApiKey, Job, JobStatus
from core.errors import InvalidRequest
from core.jobs import repository, service
from core.jobs.remix import RemixRequest
from core.jobs.service import FirstFrame
from core.jobs.view import JobView, job_view

Body = TypeVar("Body", bound=BaseModel)
router = APIRouter(prefix="/v1/videos", tags=["openai"])
NO_VIDEO: dict[int | str, dict[str, Any]] = {
    404: {"model": OpenAIErrorResponse, "description": "No such video for this API key (`after`: no such id)."}
}

SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
SECONDS = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")
MAX_SECONDS = 60
MAX_FORM_DEPTH = 4
TEMPORAL_MULTIPLE = 4
STATUS = {
    JobStatus.queued: "queued",
    JobStatus.running: "in_progress",
    JobStatus.succeeded: "completed",
    JobStatus.failed: "failed",
    JobStatus.canceled: "failed",
}


# The fields of JobRequest that OpenAI's own fields stand for (`size`, `seconds`) or that it names itself.
OPENAI_OWN = ("prompt", "model", "width", "height", "num_frames")


class OpenAIFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What the video shows; not blank.", examples=[examples.PROMPT])
    model: str | None = Field(
        default=None,
        description="A model the service serves (`GET /models`); default: the first.",
        examples=["wan-tiny"],
    )
    size: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",
        description="WIDTHxHEIGHT in pixels, each the model family's multiple. Default: the model's.",
        examples=["832x480"],
    )
    seconds: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,6})?$",
        description="Length of the clip, more than 0 and at most 60: the 4k+1 frames nearest seconds x fps.",
        examples=["4"],
    )


# POST /v1/videos' body as the OpenAPI document shows it (JSON or multipart): OpenAI's fields and skipstep's
# others (the openai client's `extra_body`). The route reads it into a JobRequest (``_job_body``).
VideoCreate = create_model(
    "VideoCreate",
    __base__=OpenAIFields,
    **{name: (field.annotation, field) for name, field in JobRequest.model_fields.items() if name not in OPENAI_OWN},
)


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
    expires_at: int | None = Field(
        default=None,
        description="Unix seconds when the video is (or was) deleted from storage; null while it runs, or if kept "
        "for ever.",
        examples=[1749384000],
    )
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
        default=None, description="The video this one was remixed from; null otherwise.", examples=[None]
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
        description="true: the video is deleted (a queued or running job is canceled first, and its video deleted "
        "once it stops).",
        examples=[True],
    )


def video(view: JobView) -> Video:
    error = VideoError(code=view.error.code, message=view.error.message) if view.error else None
    if view.status == JobStatus.canceled:
        error = VideoError(code="canceled", message="the job was canceled")
    done = view.status == JobStatus.succeeded
    return Video(
        id=str(view.id),
        created_at=int(view.created_at.timestamp()),
        completed_at=int(view.finished_at.timestamp()) if view.finished_at and done else None,
        expires_at=int(view.expires_at.timestamp()) if view.expires_at else None,
        model=view.model,
        progress=100 if done else int(view.progress.percent) if view.progress else 0,
        prompt=view.input.prompt,
        seconds=f"{(view.input.num_frames - 1) / view.input.fps:g}",
        size=f"{view.input.width}x{view.input.height}",
        status=STATUS[view.status],
        error=error,
        remixed_from_video_id=str(view.remix_of) if view.remix_of else None,
    )


async def video_fields(request: Request) -> dict[str, Any]:
    """The request's fields, from JSON or from a form (the ``openai`` client sends multipart, with nested
    ``extra_body`` fields flattened as ``cache[params][threshold]``)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise ApiError.invalid("body", "must be valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError.invalid("body", "must be a JSON object")
        return body
    form = await request.form()
    fields: dict[str, Any] = {}
    for name in form:
        given = form.getlist(name)
        values = [value for value in given if isinstance(value, str)]
        root = name.split("[")[0]
        if name == "input_reference" and len(given) == 1 and not values:
            # The first frame, as the openai client uploads it: its bytes, checked at submit.
            fields[name] = FirstFrame(data=await given[0].read())
            continue
        if len(values) != len(given):
            raise ApiError.invalid(root, "file uploads are not supported but for input_reference")
        path = name.removesuffix("[]").replace("]", "").split("[")
        if len(path) > MAX_FORM_DEPTH:
            raise ApiError.invalid(root, f"must be nested at most {MAX_FORM_DEPTH} levels deep")
        if len(path) > 1:
            # A nested field (extra_body's cache params, say) lost its JSON type in the form: 0.2 came as "0.2".
            values = [_json_value(value) for value in values]
        target = fields
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ApiError.invalid(root, "is given both as a value and as nested fields")
        if path[-1] in target and isinstance(target[path[-1]], dict):
            raise ApiError.invalid(root, "is given both as a value and as nested fields")
        target[path[-1]] = values if name.endswith("[]") else values[-1]
    problems = violations(fields)  # the values nested fields decoded to; the input guard saw the form's text
    if problems:
        raise InvalidRequest(*problems[0], *problems[1:])
    return fields


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _first_frame(fields: dict[str, Any]) -> FirstFrame | None:
    """``input_reference``: an uploaded image, or (JSON) an image URL the worker fetches."""
    given = fields.get("input_reference")
    if given is None or isinstance(given, FirstFrame):
        return given
    if not isinstance(given, str):
        raise ApiError.invalid("input_reference", "must be an image file, or an image URL")
    return FirstFrame(url=given)


def _job_body(fields: dict[str, Any]) -> JobRequest:
    return _validated(JobRequest, _job_fields(fields, JobRequest.model_fields["fps"].default))


def _validated(model: type[Body], fields: dict[str, Any]) -> Body:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = [(".".join(str(part) for part in error["loc"]) or "body", _rule(error)) for error in exc.errors()]
        raise InvalidRequest(*problems[0], *problems[1:]) from None


def _job_fields(fields: dict[str, Any], fps: int) -> dict[str, Any]:
    """skipstep's fields for OpenAI's: ``size``, and ``seconds`` at the body's fps (else ``fps``)."""
    body = dict(fields)
    body.pop("input_reference", None)
    size = body.pop("size", None)
    if size is not None:
        match = SIZE.fullmatch(size) if isinstance(size, str) else None
        if match is None:
            raise ApiError.invalid("size", "must be WIDTHxHEIGHT, e.g. 832x480")
        body["width"], body["height"] = int(match[1]), int(match[2])
    seconds = body.pop("seconds", None)
    if seconds is not None:
        length = _seconds(seconds)
        rate = _fps(body.get("fps", fps))
        if rate is not None:
            body["num_frames"] = TEMPORAL_MULTIPLE * round(length * rate / TEMPORAL_MULTIPLE) + 1
    return body


def _seconds(value: Any) -> float:
    """``seconds`` as OpenAI sends it (a string such as "4"), or a JSON number."""
    text = value if isinstance(value, str) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
    if text is None or not SECONDS.fullmatch(text):
        raise ApiError.invalid("seconds", 'must be a number of seconds, e.g. "4"')
    length = float(text)
    if not 0 < length <= MAX_SECONDS:
        raise ApiError.invalid("seconds", f"must be more than 0 and at most {MAX_SECONDS}")
    return length


def _fps(value: Any) -> int | None:
    """The body's fps for the frame count; None when it breaks its rule, which the request's validation names."""
    try:
        return TypeAdapter(JobRequest.model_fields["fps"].annotation).validate_python(value)
    except ValidationError:
        return None


def _rule(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


def _found(session: SessionDep, video_id: uuid.UUID, key: ApiKey) -> Job:
    job = repository.get(session, video_id, key)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"video {video_id} not found")
    return job


@router.post(
    "",
    response_model=Video,
    responses={
        400: {"model": OpenAIErrorResponse, "description": "A field breaks a rule; `param` names it."},
        409: {"model": OpenAIErrorResponse, "description": "Idempotency-Key reused with a different body."},
        413: {"model": OpenAIErrorResponse, "description": "The body is over the size limit."},
        429: {"model": OpenAIErrorResponse, "description": "Too many requests, or too many videos in flight."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"$ref": "#/components/schemas/VideoCreate"}}
                for media in ("application/json", "multipart/form-data")
            },
        }
    },
)
def create(
    fields: Annotated[dict[str, Any], Depends(video_fields)],
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """Queue a video (a skipstep job): JSON or multipart form, as the `openai` client sends it; `input_reference`
    is the first frame (an image file, or in JSON an image URL) for models that take one."""
    image = _first_frame(fields)
    body = _job_body(fields)
    submitted = service.submit(session, key, body, settings, BROKER, idempotency_key, image=image, storage=storage)
    return video(job_view(submitted.job, settings.public_url))


@router.post(
    "/{video_id}/remix",
    response_model=Video,
    responses={
        400: {"model": OpenAIErrorResponse, "description": "A field breaks a rule; `param` names it."},
        409: {"model": OpenAIErrorResponse, "description": "The video has not completed, or Idempotency-Key reused."},
        429: {"model": OpenAIErrorResponse, "description": "Too many requests, or too many videos in flight."},
    }
    | NO_VIDEO,
)
def remix(
    video_id: uuid.UUID,
    fields: Annotated[dict[str, Any], Depends(video_fields)],
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Any:
    """A new video from a completed one with the fields given replaced (`prompt`, and skipstep's `cache`,
    `compare`, ... in the same body); the seed, size and length are the source's unless given."""
    source = _found(session, video_id, key)
    changes = _validated(RemixRequest, _job_fields(fields, source.fps)).model_dump(exclude_unset=True)
    submitted = service.remix(session, key, source, changes, settings, BROKER, storage, idempotency_key)
    return video(job_view(submitted.job, settings.public_url))


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
    return video(job_view(_found(session, video_id, key), settings.public_url))


@router.delete("/{video_id}", response_model=VideoDeleted, responses=NO_VIDEO)
def delete(video_id: uuid.UUID, key: KeyDep, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Any:
    """Deletes the video from storage; a queued or running job is canceled first, its video deleted once it stops."""
    job = _found(session, video_id, key)
    service.delete(session, job.id, settings, storage, BROKER)
    return VideoDeleted(id=str(job.id), deleted=True)


@router.get(
    "/{video_id}/content",
    response_class=Response,
    responses={
        200: {"content": {"video/mp4": {}}},
        307: {"description": "Redirect to the MP4 (S3 storage)."},
        410: {"model": OpenAIErrorResponse, "description": "The video expired or was deleted."},
    }
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
    return mp4_response(_found(session, video_id, key), storage)
