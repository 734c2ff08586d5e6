"""All runtime settings, read once from the environment (prefix ``SKIPSTEP_``)."""

from __future__ import annotations

import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
COMPILE_SHAPE = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}x[1-9][0-9]{0,3}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPSTEP_", env_file=".env", extra="ignore")

    # Models
    model: str = Field(
        default="wan-tiny-trained",
        description="A preset name (wan-tiny-trained, wan-tiny, ltx-tiny), a local diffusers-format model directory "
        "or a hub id: the one model served when SKIPSTEP_MODELS is empty, and what `skipstep generate` loads by "
        "default.",
    )
    models: str = Field(
        default="",
        description="The models the service serves, comma-separated NAME=SOURCE (SOURCE as for SKIPSTEP_MODEL); "
        "a bare preset name is its own NAME. The first is the default. Empty: SKIPSTEP_MODEL alone.",
    )
    home: Path = Field(
        default=Path.home() / ".cache" / "skipstep",
        description="Where built presets, calibration profiles and the embedded default's data are kept.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="Compile the transformer's repeated blocks (torch.compile, fullgraph) in workers, warmed up at "
        "worker start at each warm-up shape before the worker takes jobs; auto: on CUDA workers, not on CPU.",
    )
    compile_backend: str = Field(default="inductor", description="The torch.compile backend SKIPSTEP_COMPILE uses.")
    compile_shapes: str = Field(
        default="",
        description="Shapes compiled workers warm up at besides the model's default, comma-separated "
        "WIDTHxHEIGHTxFRAMES (e.g. 480x832x81).",
    )
    attention_backend: str = Field(
        default="native",
        description="diffusers attention backend of the transformer (native, _native_cudnn, flash, _flash_3, sage, "
        "flex, _native_math, ...); one this machine cannot run falls back to native, logged and in each job's "
        "metrics.",
    )
    fp8_models: str = Field(
        default="",
        description="Models (comma-separated names) whose transformer blocks run in FP8 (torchao, dynamic scaling); "
        "needs CUDA with FP8 support (compute capability 8.9+) and the fp8 extra, else the model stays in its dtype, "
        "logged and in each job's metrics.",
    )
    parallelism: str = Field(
        default="ulysses",
        description="How a worker spanning several devices (`skipstep worker --gpus 0,1,...`) shares each job: "
        "ulysses, ring (CUDA, with an attention backend that returns the log-sum-exp) or cfg (2 devices, one CFG "
        "branch each), for every model, or per model as MODEL=MODE,... (a model not named: ulysses).",
    )
    prompt_cache_size: int = Field(
        default=32, ge=0, description="Encoded prompts a worker keeps for repeated prompts (0: none)."
    )
    text_encoder_device: str | None = Field(
        default=None,
        description="Where the text encoder runs (e.g. cpu, to leave its memory to the transformer); default: with "
        "the model.",
    )
    vae_tiling: bool = Field(
        default=False, description="Decode the video in spatial tiles: less memory at large sizes, a little slower."
    )
    lora_cache_size: int = Field(
        default=4, ge=1, description="LoRA adapters a worker keeps loaded; the least recently used is unloaded."
    )
    lora_dir: Path | None = Field(
        default=None,
        description="A folder of LoRA adapters, <model>/<name>.safetensors, that the model's workers register when "
        "they start (the same path on every worker host); unset: uploaded ones only (POST /admin/loras).",
    )
    lora_max_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="Largest LoRA file POST /admin/loras accepts."
    )

    # Request bounds: what any generation request may ask (API, CLI); the per-key job-size ceilings
    # (max_pixels, max_frames, ...) apply to service jobs within them.
    request_max_prompt_chars: int = Field(default=2000, ge=1, description="Longest prompt or negative prompt.")
    request_max_side: int = Field(default=1920, ge=16, description="Largest width or height in pixels.")
    request_max_frames: int = Field(default=257, ge=1, description="Most frames of one video.")
    request_max_steps: int = Field(default=200, ge=2, description="Most denoising steps.")
    request_max_loras: int = Field(default=3, ge=0, description="Most LoRA adapters one job names.")

    # Service
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite under home.")
    database_pool_size: int = Field(
        default=20,
        ge=1,
        description="PostgreSQL connections each process keeps open; an API process serves up to 40 requests at "
        "once, and a connection opened beyond the pool is closed after its request.",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (Redis) URL; unset: `skipstep up` starts an embedded Redis."
    )
    api_key: str | None = Field(default=None, description="The key `skipstep submit` sends.")
    public_url: str = Field(default="http://127.0.0.1:8000", description="Base URL of the API, used in links.")
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = Field(default=None, description="Local video directory; default: home/videos.")
    s3_endpoint_url: str | None = None
    s3_bucket: str = "skipstep"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_presign_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # Workers
    worker_model: str | None = Field(
        default=None, description="The model a GPU worker serves (`skipstep worker --model`); default: the first."
    )
    job_lease_seconds: float = Field(
        default=30, gt=0, description="A running job whose worker stops renewing its lease this long is retaken."
    )
    heartbeat_seconds: float = Field(
        default=10, gt=0, description="How often a worker renews its lease, reports itself and sweeps."
    )
    progress_seconds: float = Field(default=0.5, ge=0, description="Least time between progress writes.")
    max_job_attempts: int = Field(default=3, ge=1, description="Claims of one job before it fails as worker_lost.")
    max_job_seconds: float = Field(
        default=6 * 3600, gt=0, description="A running job is stopped as `timeout` after this long."
    )
    stall_seconds: float = Field(
        default=600,
        gt=0,
        description="A job that shows no progress (a step, a stage) this long is stopped as `timeout` and its "
        "worker restarts.",
    )
    shutdown_grace_seconds: float = Field(
        default=60,
        ge=0,
        description="On SIGTERM a running job may finish within this; past it, it is handed back to the queue.",
    )
    redispatch_seconds: float = Field(
        default=20, gt=0, description="A queued job sent to its queue this long ago and never claimed is sent again."
    )
    storage_attempts: int = Field(default=4, ge=1, description="Tries to store a video before the job fails.")
    retention_hours: float = Field(
        default=7 * 24,
        ge=0,
        description="A finished job's video and input objects are deleted from storage this long after it "
        "finished (its row stays, `expired`); an API key's row may override it (0: kept for ever).",
    )
    retention_sweep_seconds: float = Field(
        default=60, gt=0, description="How often the webhooks worker deletes the objects of expired jobs."
    )
    storage_retry_seconds: float = Field(
        default=1.0, ge=0, description="Wait before the second try to store a video; doubled for each further one."
    )
    storage_retry_max_seconds: float = Field(
        default=10.0,
        gt=0,
        description="The longest wait between two tries to store a video: once the store is back, the video is "
        "stored within this.",
    )

    # Server-sent events (GET /jobs/{id}/events)
    event_poll_seconds: float = Field(
        default=2.0, gt=0, le=60, description="A job's event stream re-reads the job at least this often."
    )
    event_streams_per_key: int = Field(
        default=8, ge=1, description="Concurrent event streams one API key may hold open on one API process."
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="An API process keeps a key it has looked up this long before reading it again (0: off); a "
        "revoked key, or a change to its limits, takes effect within it.",
    )

    # Limits (core.limits); an API key's row may override each per-key figure.
    max_pixels: int = Field(
        default=832 * 480, ge=1, description="Most width x height of a job (Wan2.1-1.3B: 832x480 or 480x832)."
    )
    max_frames: int = Field(default=81, ge=1, description="Most frames of a job.")
    max_steps: int = Field(default=50, ge=1, description="Most denoising steps of a job.")
    max_cost: int = Field(
        default=832 * 480 * 81 * 50, ge=1, description="Most width x height x frames x steps of a job."
    )
    rate_per_second: float = Field(
        default=20, ge=0, description="Requests per second an API key may make on average (0: unlimited)."
    )
    rate_burst: int = Field(default=200, ge=1, description="Requests an API key may make at once after a pause.")
    max_active_jobs: int = Field(
        default=100, ge=0, description="Queued plus running jobs an API key may have (0: unlimited)."
    )
    limit_admin_keys: bool = Field(default=False, description="Apply rate and job-count limits to admin keys too.")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="Largest request body; larger ones get 413.")
    admin_session_hours: float = Field(
        default=12, gt=0, le=24 * 30, description="Dashboard sessions expire after this."
    )

    # Fidelity receipts
    receipt_sample_rate: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Share of succeeded cached jobs that get an uncached re-run with the same seed on idle worker "
        "time, measuring their fidelity (metrics.fidelity, job.fidelity event) and feeding the frontier (0: off).",
    )
    receipt_margin_db: float = Field(
        default=1.0,
        ge=0,
        description="A receipt whose PSNR is this many dB below what the frontier predicted is a shortfall "
        "(skipstep_fidelity_shortfalls_total, the dashboard).",
    )

    # Metrics
    metrics_token: str | None = Field(
        default=None,
        min_length=16,
        description="A bearer token that lets a scraper read /metrics from any address (Prometheus: "
        "`authorization: {credentials: ...}`); unset: only the addresses in SKIPSTEP_METRICS_ALLOW may.",
    )
    metrics_allow: str = Field(
        default="127.0.0.0/8,::1/128",
        description="Addresses (comma-separated IPs or CIDR networks) that may read /metrics without the token; "
        "empty: none.",
    )

    # Input images (image-to-video)
    image_max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest input image (first frame), in bytes as sent."
    )
    image_max_pixels: int = Field(
        default=4096 * 4096,
        ge=64 * 64,
        description="Most pixels of an input image; more is refused, before decoding, as a decompression bomb.",
    )

    # Dashboard
    dashboard_refresh_seconds: float = Field(
        default=5, ge=0, le=3600, description="Live refresh interval of /admin (0: off); ?refresh= overrides it."
    )

    # Webhooks
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook URLs on private or loopback addresses (development, tests)."
    )
    webhook_connect_timeout: float = Field(default=5, gt=0, description="Seconds to connect to a webhook URL.")
    webhook_read_timeout: float = Field(
        default=10, gt=0, description="Seconds a webhook receiver may take for each read of its response."
    )
    webhook_deadline: float = Field(
        default=15, gt=0, description="Seconds one webhook attempt may take in all: connect, send and read."
    )
    webhook_endpoint_concurrency: int = Field(
        default=4,
        ge=1,
        description="Attempts in flight at once to one receiver (scheme, host, port), across all webhooks workers.",
    )
    webhook_key_concurrency: int = Field(
        default=8,
        ge=1,
        description="Attempts in flight at once for one API key's deliveries, across all webhooks workers; keep it "
        "well under one webhooks worker's threads (32), so that one key's slow receivers leave the rest to others.",
    )
    webhook_retry_scale: float = Field(
        default=1.0, gt=0, le=1, description="Multiplies every retry delay (tests shrink the schedule with it)."
    )
    webhook_sweep_seconds: float = Field(
        default=1.0, gt=0, description="How often a webhooks worker sends deliveries that have come due."
    )

    @model_validator(mode="after")
    def _model_names(self) -> Settings:
        for name in self.model_sources:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(
                    f"SKIPSTEP_MODELS: model name {name!r} must be lowercase letters, digits, '.', '_' or '-' "
                    "(it names the model's queue)"
                )
        return self

    @field_validator("metrics_allow")
    @classmethod
    def _metrics_allow(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def metrics_networks(self) -> list[IPv4Network | IPv6Network]:
        """SKIPSTEP_METRICS_ALLOW as networks."""
        return parse_networks(self.metrics_allow)

    @field_validator("parallelism")
    @classmethod
    def _parallelism(cls, value: str) -> str:
        parse_parallelism(value)
        return value

    def parallelism_of(self, model: str) -> str:
        """The parallelism of ``model``'s multi-device workers (SKIPSTEP_PARALLELISM)."""
        every, per_model = parse_parallelism(self.parallelism)
        return per_model.get(model, every)

    @field_validator("compile_shapes")
    @classmethod
    def _compile_shapes(cls, value: str) -> str:
        parse_shapes(value)
        return value

    @property
    def warmup_shapes(self) -> list[tuple[int, int, int]]:
        """SKIPSTEP_COMPILE_SHAPES as (width, height, frames)."""
        return parse_shapes(self.compile_shapes)

    @property
    def fp8_model_names(self) -> set[str]:
        return {name.strip() for name in self.fp8_models.split(",") if name.strip()}

    def compiles_on(self, device_type: str) -> bool:
        """Whether workers on this kind of device compile their blocks (SKIPSTEP_COMPILE)."""
        return device_type == "cuda" if self.compile == "auto" else self.compile

    @property
    def compile_cache_dir(self) -> Path:
        """Where compiled kernels are kept across worker restarts."""
        return self.home / "compile-cache"

    @property
    def model_sources(self) -> dict[str, str]:
        """Model name -> source, in the configured order (the first is the default)."""
        entries = [entry.strip() for entry in self.models.split(",") if entry.strip()] or [self.model]
        sources: dict[str, str] = {}
        for entry in entries:
            name, sep, source = entry.partition("=")
            if not sep:
                name, source = model_name(entry), entry
            sources[name.strip()] = source.strip()
        return sources

    @property
    def default_model(self) -> str:
        return next(iter(self.model_sources))

    @property
    def served_model(self) -> str:
        """The model a GPU worker serves."""
        return self.worker_model or self.default_model

    @property
    def api_key_file(self) -> Path:
        """Where `skipstep up` keeps the embedded default's admin key, and `skipstep submit` finds it."""
        return self.home / "api-key"

    @property
    def presets_dir(self) -> Path:
        return self.home / "models"

    @property
    def profiles_dir(self) -> Path:
        return self.home / "profiles"

    @property
    def broker(self) -> str:
        """The broker's Redis: SKIPSTEP_BROKER_URL, else Redis's default address on this machine."""
        return self.broker_url or DEFAULT_BROKER

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'skipstep.db'}"

    @property
    def videos_dir(self) -> Path:
        return self.storage_dir or self.home / "videos"


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``WIDTHxHEIGHTxFRAMES,...`` as (width, height, frames) tuples."""
    shapes = []
    for entry in filter(None, (item.strip() for item in text.split(","))):
        if not COMPILE_SHAPE.fullmatch(entry):
            raise ValueError(f"SKIPSTEP_COMPILE_SHAPES: {entry!r} is not WIDTHxHEIGHTxFRAMES")
        width, height, frames = map(int, entry.split("x"))
        shapes.append((width, height, frames))
    return shapes


PARALLEL_MODES = ("ulysses", "ring", "cfg")


def parse_parallelism(text: str) -> tuple[str, dict[str, str]]:
    """SKIPSTEP_PARALLELISM as (the mode of models not named, {model: mode})."""
    every, per_model = "ulysses", {}
    for entry in (entry.strip() for entry in text.split(",") if entry.strip()):
        model, sep, mode = (part.strip() for part in entry.rpartition("="))
        if mode not in PARALLEL_MODES:
            raise ValueError(f"SKIPSTEP_PARALLELISM: {mode!r} is not one of {', '.join(PARALLEL_MODES)}")
        if sep:
            per_model[model] = mode
        else:
            every = mode
    return every, per_model


def parse_networks(text: str) -> list[IPv4Network | IPv6Network]:
    """``IP,CIDR,...`` as networks (an address alone is a network of one)."""
    networks = []
    for entry in filter(None, (item.strip() for item in text.split(","))):
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"SKIPSTEP_METRICS_ALLOW: {entry!r} is not an IP address or CIDR network") from None
    return networks


def model_name(source: str) -> str:
    """The name a model goes by when none is given: a preset's name, else the last part of its
    directory or hub id, lowercased (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` -> ``wan2.1-t2v-1.3b-diffusers``)."""
    return source.rstrip("/").rsplit("/", 1)[-1].lower()


@lru_cache
def get_settings() -> Settings:
    return Settings()
