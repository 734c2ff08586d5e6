"""The database tables: API keys, jobs, workers and webhook deliveries. The job row is the source of truth for a job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Enum, Float, ForeignKey, Index, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.contract.jobs import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    # SHA-256 of the key: keys are 256-bit random tokens, so a fast hash is enough and allows an indexed lookup.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # Webhook signing secrets must be readable to sign with; the previous one is sent too until it expires.
    webhook_secret: Mapped[str] = mapped_column(String(100))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100))
    previous_webhook_secret_expires_at: Mapped[datetime | None]
    # Per-key limits; null: the global setting of the same name (core.settings.Settings, core.limits).
    max_pixels: Mapped[int | None] = mapped_column(BigInteger)
    max_frames: Mapped[int | None]
    max_steps: Mapped[int | None]
    max_cost: Mapped[int | None] = mapped_column(BigInteger)
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    rate_burst: Mapped[int | None]
    max_active_jobs: Mapped[int | None]
    # Its jobs queued or running, kept by triggers on ``jobs`` (migration 0015_queue_counts); the cap above holds
    # against it (core.limits.active).
    in_flight: Mapped[int] = mapped_column(default=0, server_default="0")
    retention_hours: Mapped[float | None] = mapped_column(Float)


class AdminSession(Base):
    """A dashboard login: the cookie holds a random token, the row only its hash."""

    __tablename__ = "admin_sessions"
    __table_args__ = (Index("ix_admin_sessions_key", "key_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    user_agent: Mapped[str | None] = mapped_column(String(200))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        # What the dispatcher reads: a model's queued jobs, each key's in priority and submission order.
        Index("ix_jobs_model_status_owner", "model", "status", "owner_id", "priority", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_strategy_created", "cache_strategy", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_finished", "finished_at"),
        Index("ix_jobs_owner_idempotency", "owner_id", "idempotency_key", unique=True),
        # What the retention sweep reads: jobs whose objects are due for deletion and not yet deleted.
        Index("ix_jobs_expiry", "expired_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, validate_strings=True), default=JobStatus.queued
    )

    # The configured model (core.settings.Settings.model_sources) that runs the job, on its own queue.
    model: Mapped[str] = mapped_column(String(100))
    # Within one API key's jobs, higher runs first; across keys, jobs are taken round-robin.
    priority: Mapped[int] = mapped_column(default=0)

    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    width: Mapped[int]
    height: Mapped[int]
    num_frames: Mapped[int]
    num_inference_steps: Mapped[int]
    guidance_scale: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    fps: Mapped[int]
    cache_strategy: Mapped[str] = mapped_column(String(32))
    cache_params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cache_profile: Mapped[str | None] = mapped_column(String(100))
    compare: Mapped[bool] = mapped_column(default=False)
    # The LoRA adapters it runs with, [{"name", "weight"}, ...] in the request's order (core.contract.loras).
    loras: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    # The job this one was remixed from (POST /jobs/{id}/remix); with ``compare`` its fidelity is against that one.
    remix_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", name="fk_jobs_remix_of"))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str]] = mapped_column(default=list)

    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the job's id was last sent to its model's queue; null: not sent since it was (re)queued.
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]

    # The worker holding the job and until when its claim is good; a worker that stops renewing it has died.
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)

    # When the running job last finished a denoising step (a job that stops making progress is stopped).
    progress_at: Mapped[datetime | None]
    progress_step: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    computed_calls: Mapped[int] = mapped_column(default=0)
    skipped_calls: Mapped[int] = mapped_column(default=0)

    video_key: Mapped[str | None] = mapped_column(String(300))
    # The first frame of an image-to-video job: its storage key beside the video (PNG, checked and sized to the
    # job), and the URL it was given by (fetched by the worker, then stored).
    input_image_key: Mapped[str | None] = mapped_column(String(300))
    input_image_url: Mapped[str | None] = mapped_column(Text)
    video_bytes: Mapped[int | None] = mapped_column(BigInteger)
    video_seconds: Mapped[float | None] = mapped_column(Float)
    # Kept as columns (not only inside ``metrics``) so that lists and summaries can sort and aggregate on them.
    denoise_seconds: Mapped[float | None] = mapped_column(Float)
    speedup: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    # What the job is expected to save, known at submit for strategies whose schedule is known ahead.
    expected: Mapped[dict[str, Any] | None]
    # The fields whose model-dependent rules could not be checked at submit (no worker had described the model
    # and its files were not readable there); the worker checks them when it claims the job. Null: none.
    pending_checks: Mapped[list[str] | None]

    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)

    # When the job's video and input objects are (or were) deleted from storage: set when the job finishes (its
    # key's retention), or to the time of a delete request. Null: kept for ever, or not finished yet.
    expires_at: Mapped[datetime | None]
    # When they were deleted; until then a job past expires_at is expired for clients and due for the sweep.
    expired_at: Mapped[datetime | None]

    # Bumped by every change a client can see (status, progress): the id of the job's server-sent events.
    version: Mapped[int] = mapped_column(default=0, server_default="0")


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    model: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(50))
    # The accelerator's name (torch.cuda.get_device_name); None on CPU.
    device_name: Mapped[str | None] = mapped_column(String(200))
    # The host GPUs the process was pinned to (CUDA_VISIBLE_DEVICES), None if it was not pinned.
    visible_devices: Mapped[str | None] = mapped_column(String(200))
    # A worker spanning several devices (one process per device): each rank's device, and how they share a job
    # (core.parallel); None for a worker on one device.
    devices: Mapped[list[str] | None] = mapped_column(JSON)
    parallelism: Mapped[str | None] = mapped_column(String(20))
    current_job_id: Mapped[uuid.UUID | None]
    jobs_done: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]
    # Why it stopped: "shutdown" (it said so), "gone" (it stopped answering and another worker noticed).
    stop_reason: Mapped[str | None] = mapped_column(String(20))


class CatalogueEntry(Base):
    """What a submit needs of a model, published by each GPU worker of it once loaded (core.jobs.catalogue), so
    that the API needs no model files. The latest worker's description wins; rows outlive the workers."""

    __tablename__ = "model_catalogue"

    # The configured model name (the job's ``model``).
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    # The source the worker loaded: a description is only used while the configuration names the same one.
    source: Mapped[str] = mapped_column(Text)
    family: Mapped[str] = mapped_column(String(32))
    # width, height, num_frames, num_inference_steps
    default_shape: Mapped[dict[str, Any]]
    block_count: Mapped[int | None]
    # The transformer's class and config, as its config.json has them (what calibration profiles match).
    transformer: Mapped[dict[str, Any]]
    # The cache strategies that apply: those needing no calibration, and those the worker holds a profile for.
    strategies: Mapped[list[str]]
    # The calibration profiles the worker holds for this transformer (JSON documents).
    profiles: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The pipeline's class and what a submit reads of its config (core.contract.models.pipeline_config); null in
    # rows published before workers described it.
    pipeline: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The transformer's linear modules, name -> [in_features, out_features]: what a LoRA for the model may adapt
    # (core.contract.loras). Null in rows published before workers described them.
    lora_modules: Mapped[dict[str, list[int]] | None] = mapped_column(JSON)
    described_by: Mapped[str] = mapped_column(String(200))
    described_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lora(Base):
    """A LoRA adapter registered for one model: uploaded (POST /admin/loras, its file in the object store) or found
    in SKIPSTEP_LORA_DIR by a worker of the model. Its tensors were checked against the model's transformer."""

    __tablename__ = "loras"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The configured model name (a job's ``model``) it adapts.
    model: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    # Where its file is: a storage key (uploaded), or a path on the worker hosts (SKIPSTEP_LORA_DIR).
    storage_key: Mapped[str | None] = mapped_column(String(300))
    path: Mapped[str | None] = mapped_column(Text)
    # The transformer modules it adapts and its rank.
    modules: Mapped[list[str]] = mapped_column(JSON)
    rank: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRun(Base):
    """One claim of a job by a worker, start to end: a job taken over after a crash has several."""

    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_job", "job_id", "attempt"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int]
    worker_id: Mapped[str] = mapped_column(String(200))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    # succeeded, failed, canceled (as the job), requeued (lease lost), handed_back (shutdown), lost (lease lost mid-run)
    outcome: Mapped[str | None] = mapped_column(String(20))


class KeyTurn(Base):
    """When each API key last had a job of each model started: ties between keys' turns go to the key
    served longest ago, which makes the queue round-robin across keys (core.jobs.dispatch)."""

    __tablename__ = "key_turns"

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_started_at: Mapped[datetime]


class QueueCount(Base):
    """How many jobs each API key has queued and running on each model, and when it last queued one there, kept by
    triggers on ``jobs`` (migration 0015_queue_counts) in the transaction that changes them: the queue position and the
    in-flight cap read a row per key instead of counting the jobs. A SQLite batch migration that rebuilds ``jobs``
    must create the triggers again."""

    __tablename__ = "queue_counts"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"), primary_key=True, index=True)
    queued: Mapped[int] = mapped_column(default=0, server_default="0")
    running: Mapped[int] = mapped_column(default=0, server_default="0")
    # When the newest job counted as queued here was created; none of the key's queued jobs is newer (those that
    # left the queue are not subtracted, so it bounds them from above).
    latest_queued_at: Mapped[datetime | None]


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for next_attempt_at
    delivering = "delivering"  # an attempt is in flight; next_attempt_at is when it may be retaken
    succeeded = "succeeded"
    failed = "failed"
    gone = "gone"  # the receiver answered 410

    @property
    def finished(self) -> bool:
        return self in (DeliveryStatus.succeeded, DeliveryStatus.failed, DeliveryStatus.gone)


class WebhookDelivery(Base):
    """One event on its way to one URL. A manual resend is a new delivery of the same event (same event_id)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_job", "job_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"))
    event_type: Mapped[str] = mapped_column(String(32))
    # The Standard Webhooks `webhook-id`: receivers dedupe on it.
    event_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    # The request body, serialized once when the event happened so that every attempt sends the same bytes.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, native_enum=False, length=16, validate_strings=True), default=DeliveryStatus.pending
    )
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    # When a task for the delivery was last sent to the broker; the sweep sends again if that message is lost.
    dispatched_at: Mapped[datetime | None]
    resend_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("webhook_deliveries.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"))
    number: Mapped[int]
    attempted_at: Mapped[datetime]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))  # a core.webhooks.retry.Verdict
    reason: Mapped[str] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]


class FrontierPointRow(Base):
    """One setting of a measured frontier (``skipstep frontier``): a model at one shape and step count, one cache
    setting, and what it measured against uncached runs of the same seeds; receipts fold into its fidelity."""

    __tablename__ = "frontier_points"
    __table_args__ = (
        Index(
            "ix_frontier_points_setting",
            "model",
            "width",
            "height",
            "num_frames",
            "num_inference_steps",
            "adapters",
            "setting",
            unique=True,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # The model measured: a preset name, hub id or model directory's name (core.contract.models.model_key).
    model: Mapped[str] = mapped_column(String(300))
    width: Mapped[int]
    height: Mapped[int]
    num_frames: Mapped[int]
    num_inference_steps: Mapped[int]
    guidance_scale: Mapped[float] = mapped_column(Float)
    # The LoRA adapters the model ran with (core.contract.loras.adapter_key); empty: the base model.
    adapters: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    strategy: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    # core.contract.frontier.setting_key(strategy, params)
    setting: Mapped[str] = mapped_column(String(1000))
    computed_calls: Mapped[float] = mapped_column(Float)
    total_calls: Mapped[int]
    speedup: Mapped[float] = mapped_column(Float)
    denoise_seconds: Mapped[float] = mapped_column(Float)
    baseline_denoise_seconds: Mapped[float] = mapped_column(Float)
    # Fidelity over every sample (prompts measured, then receipts): worst and mean.
    psnr_min: Mapped[float] = mapped_column(Float)
    psnr_mean: Mapped[float] = mapped_column(Float)
    ssim_min: Mapped[float] = mapped_column(Float)
    ssim_mean: Mapped[float] = mapped_column(Float)
    samples: Mapped[int]
    receipts: Mapped[int] = mapped_column(default=0)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FidelityReceipt(Base):
    """A sampled cached job's uncached re-run with the same seed: its measured fidelity, what the frontier had
    predicted, and whether it fell short of that by more than the margin (SKIPSTEP_RECEIPT_MARGIN_DB)."""

    __tablename__ = "fidelity_receipts"
    __table_args__ = (Index("ix_fidelity_receipts_model_measured", "model", "measured_at"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(100))
    strategy: Mapped[str] = mapped_column(String(32))
    point_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("frontier_points.id", ondelete="SET NULL"))
    psnr: Mapped[float] = mapped_column(Float)
    ssim: Mapped[float] = mapped_column(Float)
    predicted_psnr: Mapped[float | None] = mapped_column(Float)
    predicted_ssim: Mapped[float | None] = mapped_column(Float)
    shortfall: Mapped[bool] = mapped_column(default=False)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
