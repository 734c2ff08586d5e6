"""A job's live progress as server-sent events (``core.jobs.stream``)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import StreamingResponse

from api.deps import KeyDep, SessionDep, SettingsDep
from api.errors import ApiError, ErrorResponse
from core.jobs import repository, stream

router = APIRouter(tags=["jobs"])
# An event id is a job's version: ASCII digits (str.isdigit() also takes "²"), within a BIGINT.
EVENT_ID = re.compile(r"[0-9]{1,18}")
slots = stream.StreamSlots()

EXAMPLE = (
    'id: 3\nevent: status\ndata: {"id": "...", "status": "running", ...}\n\n'
    'id: 4\nevent: progress\ndata: {"step": 1, "total": 6, "percent": 16.7, "computed_calls": 2, '
    '"skipped_calls": 0}\n\n'
    'id: 9\nevent: succeeded\ndata: {"id": "...", "status": "succeeded", "result": {"video_url": "..."}, ...}\n\n'
)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"example": EXAMPLE}}, "description": "The job's events."},
        204: {"description": "The job has finished and the client has seen its last event (Last-Event-ID)."},
        404: {"model": ErrorResponse, "description": "No such job for this API key."},
        429: {"model": ErrorResponse, "description": "This API key holds too many open streams."},
    },
)
def job_events(
    job_id: uuid.UUID,
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    """Follow a job as it runs: `status` when its status changes (the whole job), `progress` at each step it
    records (step, total, percent, computed and skipped transformer calls), then one event named for its
    terminal status (`succeeded` with the video URL, `failed`, `canceled`; the whole job), and the stream
    ends. Each event's id is the job's version: reconnect with `Last-Event-ID` to resume without repeats."""
    job = repository.get(session, job_id, key)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    last_seen = None
    if last_event_id is not None:
        if not EVENT_ID.fullmatch(last_event_id):
            raise ApiError.invalid("Last-Event-ID", "must be the id of an event of this stream")
        last_seen = int(last_event_id)
    if job.status.finished and last_seen is not None and last_seen >= job.version:
        # 204 tells an EventSource not to reconnect.
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    # The stream reads with short sessions of its own; hold no pooled connection for its lifetime.
    session.close()
    if not slots.take(key.id, settings.event_streams_per_key):
        message = f"this API key already holds {settings.event_streams_per_key} open event streams"
        raise ApiError(status.HTTP_429_TOO_MANY_REQUESTS, message, headers={"Retry-After": "5"})

    async def held() -> AsyncIterator[str]:
        try:
            async for text in stream.events(settings, job_id, last_seen):
                yield text
        finally:
            slots.release(key.id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(held(), media_type="text/event-stream", headers=headers)
