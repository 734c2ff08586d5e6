"""A job's MP4 as a response: the file (local storage) or a redirect to a time-limited URL (S3)."""

from __future__ import annotations

from typing import Any

from fastapi import status
from fastapi.responses import FileResponse, RedirectResponse

from api.errors import ApiError
from core.db import Job, JobStatus
from core.jobs.retention import is_expired
from core.storage import Storage


def mp4_response(job: Job, storage: Storage) -> Any:
    if job.status != JobStatus.succeeded or job.video_key is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job.id} has no video (status {job.status.value})")
    if is_expired(job):
        raise ApiError(status.HTTP_410_GONE, f"the video of job {job.id} was deleted (expired at {job.expires_at})")
    url = storage.presigned_url(job.video_key)
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    return FileResponse(storage.local_path(job.video_key), media_type="video/mp4", filename=f"{job.id}.mp4")


def image_response(job: Job, storage: Storage) -> Any:
    if job.input_image_key is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job.id} has no stored input image")
    url = storage.presigned_url(job.input_image_key)
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    return FileResponse(storage.local_path(job.input_image_key), media_type="image/png")
