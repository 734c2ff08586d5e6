"""A job as clients see it: the body of ``GET /jobs/{id}`` and of webhook events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.contract.request import JobRequest
from core.db import Job, JobStatus
from core.jobs.expected import Expected
from core.jobs.mapping import request_of


class ProgressView(BaseModel):
    step: int = Field(description="Denoising steps finished.")
    total: int
    percent: float
    computed_calls: int = Field(description="Transformer calls (steps x CFG branches) that ran.")
    skipped_calls: int = Field(description="Transformer calls the cache replaced by a cached residual.")


class ResultView(BaseModel):
    video_url: str
    bytes: int
    duration_seconds: float


class ErrorView(BaseModel):
    code: str
    message: str


class Links(BaseModel):
    self: str
    cancel: str
    video: str | None
    deliveries: str


class JobView(BaseModel):
    id: uuid.UUID
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model: str = Field(description="The model that runs the job.")
    queue_position: int | None = Field(
        description="While queued: 1 means the next job a worker of its model takes (jobs are taken round-robin "
        "across API keys, by priority within a key)."
    )
    status_detail: str | None = Field(
        description="While queued: `waiting_for_worker` when no live worker serves the job's model."
    )
    estimated_start_at: datetime | None = Field(
        default=None,
        description="While queued: when a worker may take the job, from the jobs ahead of it and the model's "
        "workers' recent run times; null when there is nothing to estimate from.",
    )
    cancel_requested: bool
    input: JobRequest = Field(
        description="The request as the job runs it: the model's defaults and the seed filled in."
    )
    expected: Expected | None = Field(
        description="For strategies whose schedule is known ahead (MagCache; TeaCache where the calibration "
        "profile has the job's steps): the planned computed and skipped calls per branch, the ideal speedup and "
        "an estimated denoise time."
    )
    progress: ProgressView | None
    result: ResultView | None
    metrics: dict[str, Any] | None = Field(
        description="On success: denoise seconds, seconds per computed step, speedup, steps computed and "
        "skipped per CFG branch with the skip schedule, stage timings, fidelity when measured."
    )
    error: ErrorView | None
    worker: str | None
    links: Links


def job_view(
    job: Job,
    public_url: str,
    queue_position: int | None = None,
    waiting_for_worker: bool = False,
    estimated_start_at: datetime | None = None,
) -> JobView:
    base = f"{public_url.rstrip('/')}/jobs/{job.id}"
    progress = None
    if job.progress_total:
        progress = ProgressView(
            step=job.progress_step,
            total=job.progress_total,
            percent=round(100 * job.progress_step / job.progress_total, 1),
            computed_calls=job.computed_calls,
            skipped_calls=job.skipped_calls,
        )
    result = None
    if job.status == JobStatus.succeeded and job.video_key is not None:
        result = ResultView(
            video_url=f"{base}/video", bytes=job.video_bytes or 0, duration_seconds=job.video_seconds or 0.0
        )
    error = None
    if job.error_code is not None:
        error = ErrorView(code=job.error_code, message=job.error_message or "")
    return JobView(
        id=job.id,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        model=job.model,
        queue_position=queue_position if job.status == JobStatus.queued else None,
        status_detail="waiting_for_worker" if waiting_for_worker and job.status == JobStatus.queued else None,
        estimated_start_at=estimated_start_at if job.status == JobStatus.queued else None,
        cancel_requested=job.cancel_requested_at is not None,
        input=request_of(job),
        expected=Expected.model_validate(job.expected) if job.expected else None,
        progress=progress,
        result=result,
        metrics=job.metrics,
        error=error,
        worker=job.worker_id,
        links=Links(
            self=base,
            cancel=f"{base}/cancel",
            video=f"{base}/video" if result is not None else None,
            deliveries=f"{base}/deliveries",
        ),
    )
