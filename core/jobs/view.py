"""A job as clients see it: the body of ``GET /jobs/{id}`` and of webhook events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.contract import examples
from core.contract.request import JobInput
from core.db import Job, JobStatus
from core.jobs.expected import Expected, Standing
from core.jobs.mapping import request_of
from core.jobs.retention import is_expired


class ProgressView(BaseModel):
    step: int = Field(
        description="Denoising steps finished; with `compare`, the uncached baseline's steps follow the job's.",
        examples=[50],
    )
    total: int = Field(
        description="Denoising steps in all: the job's, twice that with `compare` (its uncached baseline runs after).",
        examples=[50],
    )
    percent: float = Field(description="step / total, in percent, one decimal.", examples=[100.0])
    computed_calls: int = Field(description="Transformer calls (steps x CFG branches) that ran.", examples=[62])
    skipped_calls: int = Field(description="Transformer calls the cache replaced by a cached residual.", examples=[38])


class ResultView(BaseModel):
    video_url: str = Field(
        description="GET it (with the API key) for the MP4: the file, or a 307 to the store; 410 once expired.",
        examples=[f"{examples.JOB_URL}/video"],
    )
    expired: bool = Field(
        default=False,
        description="The video was deleted from storage (its retention ran out, or it was deleted): its URL "
        "answers 410; the figures stay.",
        examples=[False],
    )
    bytes: int = Field(description="Size of the MP4.", examples=[2315514])
    duration_seconds: float = Field(description="Frames over fps.", examples=[5.0625])


class ErrorView(BaseModel):
    code: str = Field(
        description="Why the job failed: `invalid_request`, `generation_failed`, `storage_failed`, `timeout`, "
        "`worker_lost`.",
        examples=["timeout"],
    )
    message: str = Field(
        description="What happened, for people; no server internals.",
        examples=["the job ran longer than 21600 s (SKIPSTEP_MAX_JOB_SECONDS)"],
    )


class InputImageView(BaseModel):
    url: str | None = Field(
        description="The stored first frame (PNG at the job's size): `GET /jobs/{id}/image`; null while an image "
        "given by URL waits for its worker to fetch and check it.",
        examples=["https://skipstep.example/jobs/0b7e.../image"],
    )
    source_url: str | None = Field(
        description="The URL the image was given by; null for an upload.", examples=["https://example.com/cat.png"]
    )


class Links(BaseModel):
    self: str = Field(description="This job.", examples=[examples.JOB_URL])
    cancel: str = Field(description="POST to cancel it.", examples=[f"{examples.JOB_URL}/cancel"])
    video: str | None = Field(
        description="The MP4, once the job has succeeded; null before, and once expired.",
        examples=[f"{examples.JOB_URL}/video"],
    )
    deliveries: str = Field(
        description="Its webhook deliveries and their attempts.", examples=[f"{examples.JOB_URL}/deliveries"]
    )


class BranchMetrics(BaseModel):
    computed: int = Field(description="Steps whose transformer call ran for this CFG branch.", examples=[31])
    skipped: int = Field(description="Steps that reused the cached residual instead.", examples=[19])
    schedule: str = Field(
        description='One character per step: "C" computed, "." cached residual reused.',
        examples=[examples.SCHEDULE],
    )
    rules: str | None = Field(
        default=None,
        description='Composite strategies: which rule decided each step. TaoCache: "C" computed, "m"/"t" reused by '
        'MagCache/TeaCache, "p" predicted by TaoCache; Chipmunk: "D" dense layers, "s" sparse deltas, "m"/"t" reused '
        "by its step cache; null for other strategies.",
        examples=["CCCCCCCCCCCmCmCCmCmCCmCmCCpCppCppCppCppCppCppCppCC"],
    )


class FidelityMetrics(BaseModel):
    """Against an uncached run of the same request and seed: ``compare: true``, or a sampled job's receipt; or,
    for a remix with ``compare: true``, against its source."""

    psnr: float | None = Field(
        description="dB over the decoded frames; null when identical (infinite).", examples=[33.8]
    )
    ssim: float | None = Field(
        description="Mean structural similarity of the decoded frames, 1 when identical.", examples=[0.957]
    )
    baseline_denoise_seconds: float = Field(description="Denoising time of the baseline run.", examples=[101.8])
    measured_speedup: float = Field(description="The baseline's denoising time over this job's.", examples=[1.5674])
    basis: Literal["compare", "receipt"] = Field(
        default="compare",
        description="compare: the job asked (`compare: true`; float frames); receipt: the job was sampled for an "
        "uncached re-run on idle worker time after it succeeded (8-bit frames, PSNR capped at 100 dB).",
        examples=["receipt"],
    )
    predicted_psnr: float | None = Field(
        default=None,
        description="Receipts: the PSNR the model's frontier predicted for the job's setting; null without one.",
        examples=[31.2],
    )
    predicted_ssim: float | None = Field(
        default=None, description="Receipts: the SSIM the frontier predicted; null without one.", examples=[0.95]
    )
    shortfall: bool | None = Field(
        default=None,
        description="Receipts: the measured PSNR fell below the prediction by more than SKIPSTEP_RECEIPT_MARGIN_DB.",
        examples=[False],
    )
    baseline: Literal["uncached", "source"] = Field(
        default="uncached",
        description="What the frames were compared with: `uncached`, the same request without a cache; `source`, "
        "a remix's source job (its request run again: the same seed gives the same frames).",
        examples=["uncached"],
    )


class StageTimings(BaseModel):
    """Seconds per stage; null where the stage did not happen."""

    queued: float | None = Field(description="Submitted to started.", examples=[4.0])
    submit_to_denoising: float | None = Field(
        description="Submitted to the first denoising step starting.", examples=[5.6]
    )
    text_encoding: float | None = Field(description="Encoding the prompt and negative prompt.", examples=[1.2])
    denoising: float | None = Field(description="The denoising loop.", examples=[examples.DENOISE_SECONDS])
    vae_decode: float | None = Field(description="Decoding the latents into frames.", examples=[5.8])
    mp4_encoding: float | None = Field(description="Encoding the frames as an MP4.", examples=[0.9])
    upload: float | None = Field(description="Storing the MP4.", examples=[0.4])


class ChoiceMetrics(BaseModel):
    requested: str = Field(description="What the worker's settings ask for.", examples=["_flash_3"])
    used: str = Field(description="What ran.", examples=["native"])
    fallback_reason: str | None = Field(
        description="Why the request could not be met on the worker's machine; null when it was.",
        examples=["RuntimeError: Flash Attention 3 backend '_flash_3' is not usable because of missing package"],
    )


class EngineMetrics(BaseModel):
    """How the worker's model ran the job."""

    attention: ChoiceMetrics = Field(description="Attention backend (SKIPSTEP_ATTENTION_BACKEND).")
    precision: ChoiceMetrics = Field(
        description="The transformer blocks' precision: the model's dtype, or fp8 (SKIPSTEP_FP8_MODELS)."
    )
    compiled: bool = Field(description="The transformer's blocks ran compiled (SKIPSTEP_COMPILE).", examples=[True])
    prompt_cached: bool = Field(
        description="The prompt's encoding was reused from an earlier job on the same worker.", examples=[False]
    )
    devices: int = Field(
        default=1,
        description="Devices that ran the job together: more than 1 on a worker spanning several (`skipstep worker "
        "--gpus`).",
        examples=[1],
    )
    parallelism: str | None = Field(
        default=None,
        description="How those devices shared each step (ulysses, ring, cfg); null on one device.",
        examples=[None],
    )
    pipeline_loads: int | None = Field(
        default=None,
        description="Pipelines the worker's process has loaded from their files so far: 1 while it has never "
        "reloaded its model (LoRA adapters never do); null for older jobs.",
        examples=[1],
    )
    lora_loads: int | None = Field(
        default=None,
        description="LoRA adapters the worker's process has loaded from their files so far (an adapter stays "
        "loaded between jobs, SKIPSTEP_LORA_CACHE_SIZE); null for older jobs.",
        examples=[2],
    )


class LoraRun(BaseModel):
    """A LoRA adapter a job ran with."""

    name: str = Field(description="The registered LoRA.", examples=["claymation"])
    weight: float = Field(description="Its adapter weight.", examples=[0.8])
    sha256: str = Field(description="The digest of the file that ran.", examples=["9f86d081884c7d65" * 4])
    loaded: bool = Field(
        description="Its file was loaded for this job; false: it was already loaded on the worker.", examples=[False]
    )


class JobMetrics(BaseModel):
    """What the cache saved and where the time went (on success)."""

    strategy: str = Field(description="The cache strategy that ran.", examples=["magcache"])
    params: dict[str, Any] = Field(
        description="Its parameters, defaults filled in.",
        examples=[
            {"predictor": "reuse", "predictor_order": 1, "threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2}
        ],
    )
    profile: str | None = Field(
        description="The calibration profile it used; null for strategies that need none.", examples=[examples.PROFILE]
    )
    steps_total: int = Field(description="Denoising steps.", examples=[50])
    branches: dict[str, BranchMetrics] = Field(
        description="Per CFG branch (`cond`, `uncond`).",
        examples=[{"cond": examples.BRANCH, "uncond": examples.BRANCH}],
    )
    denoise_seconds: float = Field(description="Wall time of the denoising loop.", examples=[examples.DENOISE_SECONDS])
    seconds_per_step: float = Field(description="denoise_seconds over steps_total.", examples=[1.299])
    seconds_per_computed_step: float = Field(
        description="denoise_seconds over computed steps (computed calls over CFG branches).", examples=[2.0952]
    )
    estimated_full_seconds: float = Field(
        description="Denoising time plus the skipped calls at the per-call time.", examples=[102.57]
    )
    speedup: float = Field(
        description="Measured when compared (`speedup_basis`), else the engine's estimate.", examples=[1.5674]
    )
    speedup_basis: Literal["measured", "estimated"] = Field(
        description="measured: against the uncached run of `compare: true`; estimated: `estimated_speedup`.",
        examples=["measured"],
    )
    estimated_speedup: float = Field(description="estimated_full_seconds over denoise_seconds.", examples=[1.5792])
    ideal_speedup: float = Field(description="All calls over computed calls.", examples=[1.6129])
    loras: list[LoraRun] = Field(
        default_factory=list,
        description="The LoRA adapters the job ran with, in its order; empty: the base model's weights.",
        examples=[[{"name": "claymation", "weight": 0.8, "sha256": "9f86d081884c7d65" * 4, "loaded": False}]],
    )
    fidelity: FidelityMetrics | None = Field(
        description="With `compare: true`, or once a sampled job's receipt is measured; null otherwise."
    )
    step_seconds: list[float] = Field(description="Wall time of each denoising step.", examples=[examples.STEP_SECONDS])
    timings: StageTimings = Field(description="Seconds per stage, submit to upload.")
    frames_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the video's frames as 8-bit RGB, before MP4 encoding (whose bytes may vary from run to "
        "run): the same model, request and seed give the same digest, on one device or several.",
        examples=["9f2c4e0b7a1d3c5e8f6a2b4d0c9e7f1a3b5d7c9e1f3a5b7d9c1e3f5a7b9d1c3e"],
    )
    engine: EngineMetrics | None = Field(
        default=None, description="Attention kernel, precision, compilation, prompt cache; null for older jobs."
    )


class JobView(BaseModel):
    id: uuid.UUID = Field(description="The job's id.", examples=[examples.JOB_ID])
    status: JobStatus = Field(
        description="queued, running, then succeeded, failed or canceled.", examples=["succeeded"]
    )
    created_at: datetime = Field(description="When it was submitted.", examples=[examples.CREATED_AT])
    started_at: datetime | None = Field(
        description="When a worker started it (its latest attempt); null before.", examples=[examples.STARTED_AT]
    )
    finished_at: datetime | None = Field(
        description="When it reached its final status; null before.", examples=[examples.FINISHED_AT]
    )
    model: str = Field(description="The model that runs the job.", examples=[examples.MODEL])
    queue_position: int | None = Field(
        description="While queued: 1 means the next job a worker of its model takes (jobs are taken round-robin "
        "across API keys, by priority within a key); null otherwise.",
        examples=[3],
    )
    status_detail: str | None = Field(
        description="While queued: `waiting_for_worker` when no live worker serves the job's model; null otherwise.",
        examples=["waiting_for_worker"],
    )
    estimated_start_at: datetime | None = Field(
        default=None,
        description="While queued: when a worker may take the job, from the jobs ahead of it and the model's "
        "workers' recent run times; null when there is nothing to estimate from.",
        examples=["2025-06-01T12:03:30Z"],
    )
    cancel_requested: bool = Field(
        description="A cancel was asked for; a running job stops at its next step.", examples=[False]
    )
    input: JobInput = Field(description="The request as the job runs it: the model's defaults and the seed filled in.")
    input_image: InputImageView | None = Field(
        default=None, description="An image-to-video job's first frame; null for a text-to-video job."
    )
    expected: Expected | None = Field(
        description="For strategies whose schedule is known ahead (MagCache; TeaCache where the calibration "
        "profile has the job's steps): the planned computed and skipped calls per branch, the ideal speedup and "
        "an estimated denoise time; null otherwise."
    )
    pending_checks: list[str] = Field(
        default_factory=list,
        description="While queued: the fields whose rules depend on the model and were not checked at submit, "
        "because no worker had described the model yet (`GET /models`: `family` null). Its worker checks them "
        "when it takes the job; a broken rule ends the job `failed` with `invalid_request` naming the field. "
        "Empty otherwise.",
        examples=[["width", "height", "num_frames"]],
    )
    remix_of: uuid.UUID | None = Field(
        default=None,
        description="The job this one was remixed from (`POST /jobs/{id}/remix`); null otherwise.",
        examples=[None],
    )
    expires_at: datetime | None = Field(
        default=None,
        description="When the job's video and inputs are (or were) deleted from storage: its API key's retention "
        "after it finished, or when it was deleted (`DELETE /jobs/{id}`); null while it runs or if kept for ever.",
        examples=["2025-06-08T12:01:40Z"],
    )
    progress: ProgressView | None = Field(description="Once running; null before.")
    result: ResultView | None = Field(description="On success; null otherwise.")
    metrics: JobMetrics | None = Field(
        description="On success: what the cache saved and where the time went; null otherwise."
    )
    error: ErrorView | None = Field(description="On failure: why; null otherwise.")
    worker: str | None = Field(
        description="The worker (host:pid) that ran it last; null before one took it.", examples=[examples.WORKER]
    )
    links: Links = Field(description="URLs of the job and what can be done with it.")


def job_view(job: Job, public_url: str, standing: Standing | None = None) -> JobView:
    """The job as clients see it; ``standing``: where it stands while queued (core.jobs.expected)."""
    place = standing if standing is not None and job.status == JobStatus.queued else None
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
            video_url=f"{base}/video",
            expired=is_expired(job),
            bytes=job.video_bytes or 0,
            duration_seconds=job.video_seconds or 0.0,
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
        queue_position=place.position if place is not None else None,
        status_detail="waiting_for_worker" if place is not None and place.waiting_for_worker else None,
        estimated_start_at=place.estimated_start_at if place is not None else None,
        cancel_requested=job.cancel_requested_at is not None,
        input=JobInput.model_construct(**dict(request_of(job))),
        input_image=InputImageView(
            url=f"{base}/image" if job.input_image_key is not None else None, source_url=job.input_image_url
        )
        if job.input_image_key is not None or job.input_image_url is not None
        else None,
        expected=Expected.model_validate(job.expected) if job.expected else None,
        pending_checks=list(job.pending_checks or ()) if job.status == JobStatus.queued else [],
        remix_of=job.remix_of,
        expires_at=job.expires_at if job.status.finished else None,
        progress=progress,
        result=result,
        metrics=JobMetrics.model_validate(job.metrics) if job.metrics else None,
        error=error,
        worker=job.worker_id,
        links=Links(
            self=base,
            cancel=f"{base}/cancel",
            video=f"{base}/video" if result is not None and not result.expired else None,
            deliveries=f"{base}/deliveries",
        ),
    )
