"""A job as clients see it: the body of ``GET /jobs/{id}`` and of webhook events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.contract.request import JobRequest
from core.db import Job, JobStatus
from core.jobs.expected import Expected
from core.jobs.mapping import request_of


class ProgressView(BaseModel):
    step: int = Field(description="Denoising steps finished.")
    total: int = Field(description="Denoising steps in all.")
    percent: float = Field(description="step / total, in percent, one decimal.")
    computed_calls: int = Field(description="Transformer calls (steps x CFG branches) that ran.")
    skipped_calls: int = Field(description="Transformer calls the cache replaced by a cached residual.")


class ResultView(BaseModel):
    video_url: str = Field(description="GET it (with the API key) for the MP4: the file, or a 307 to the store.")
    bytes: int = Field(description="Size of the MP4.")
    duration_seconds: float = Field(description="Frames over fps.")


class ErrorView(BaseModel):
    code: str = Field(
        description="Why the job failed: `invalid_request`, `generation_failed`, `storage_failed`, `timeout`, "
        "`worker_lost`."
    )
    message: str = Field(description="What happened, for people; no server internals.")


class Links(BaseModel):
    self: str = Field(description="This job.")
    cancel: str = Field(description="POST to cancel it.")
    video: str | None = Field(description="The MP4, once the job has succeeded.")
    deliveries: str = Field(description="Its webhook deliveries and their attempts.")


class BranchMetrics(BaseModel):
    computed: int = Field(description="Steps whose transformer call ran for this CFG branch.")
    skipped: int = Field(description="Steps that reused the cached residual instead.")
    schedule: str = Field(description='One character per step: "C" computed, "." cached residual reused.')
    rules: str | None = Field(
        default=None,
        description='TaoCache composites: which rule decided each step, "C" computed, "m"/"t" reused by '
        'MagCache/TeaCache, "p" predicted by TaoCache.',
    )


class FidelityMetrics(BaseModel):
    """Against an uncached run of the same request and seed (``compare: true``)."""

    psnr: float | None = Field(description="dB over the decoded frames; null when identical (infinite).")
    ssim: float | None = Field(description="Mean structural similarity of the decoded frames, 1 when identical.")
    baseline_denoise_seconds: float = Field(description="Denoising time of the uncached run.")
    measured_speedup: float = Field(description="Uncached denoising time over this job's.")


class StageTimings(BaseModel):
    """Seconds per stage; null where the stage did not happen."""

    queued: float | None = Field(description="Submitted to started.")
    submit_to_denoising: float | None = Field(description="Submitted to the first denoising step starting.")
    text_encoding: float | None
    denoising: float | None
    vae_decode: float | None
    mp4_encoding: float | None
    upload: float | None


class JobMetrics(BaseModel):
    """What the cache saved and where the time went (on success)."""

    strategy: str = Field(description="The cache strategy that ran.")
    params: dict[str, Any] = Field(description="Its parameters, defaults filled in.")
    profile: str | None = Field(description="The calibration profile it used, if any.")
    steps_total: int
    branches: dict[str, BranchMetrics] = Field(description="Per CFG branch (`cond`, `uncond`).")
    denoise_seconds: float
    seconds_per_step: float
    seconds_per_computed_step: float
    estimated_full_seconds: float = Field(description="Denoising time plus the skipped calls at the per-call time.")
    speedup: float = Field(description="Measured when compared (`speedup_basis`), else the engine's estimate.")
    speedup_basis: Literal["measured", "estimated"]
    estimated_speedup: float
    ideal_speedup: float = Field(description="All calls over computed calls.")
    fidelity: FidelityMetrics | None = Field(description="With `compare: true` only.")
    step_seconds: list[float] = Field(description="Wall time of each denoising step.")
    timings: StageTimings


class JobView(BaseModel):
    id: uuid.UUID
    status: JobStatus = Field(description="queued, running, then succeeded, failed or canceled.")
    created_at: datetime = Field(description="When it was submitted.")
    started_at: datetime | None = Field(description="When a worker started it (its latest attempt).")
    finished_at: datetime | None = Field(description="When it reached its final status.")
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
    cancel_requested: bool = Field(description="A cancel was asked for; a running job stops at its next step.")
    input: JobRequest = Field(
        description="The request as the job runs it: the model's defaults and the seed filled in."
    )
    expected: Expected | None = Field(
        description="For strategies whose schedule is known ahead (MagCache; TeaCache where the calibration "
        "profile has the job's steps): the planned computed and skipped calls per branch, the ideal speedup and "
        "an estimated denoise time."
    )
    progress: ProgressView | None = Field(description="Once running.")
    result: ResultView | None = Field(description="On success.")
    metrics: JobMetrics | None = Field(description="On success: what the cache saved and where the time went.")
    error: ErrorView | None = Field(description="On failure: why.")
    worker: str | None = Field(description="The worker (host:pid) that ran it last.")
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
        metrics=JobMetrics.model_validate(job.metrics) if job.metrics else None,
        error=error,
        worker=job.worker_id,
        links=Links(
            self=base,
            cancel=f"{base}/cancel",
            video=f"{base}/video" if result is not None else None,
            deliveries=f"{base}/deliveries",
        ),
    )
