"""Request bodies and list responses. The job itself is ``core.jobs.view.JobView``."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.contract.shapes import Shape
from core.contract.strategies import CacheSpec
from core.jobs.view import JobView
from core.webhooks.addresses import check_url_syntax

WebhookEvent = Literal["job.started", "job.succeeded", "job.failed", "job.canceled"]
DEFAULT_EVENTS: list[WebhookEvent] = ["job.succeeded", "job.failed", "job.canceled"]
# Wan's rules: the VAE downsamples space by 8 and the transformer patches by 2; time by 4 plus the first frame.
SPATIAL_MULTIPLE = 16
TEMPORAL_MULTIPLE = 4


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a red fox running through snow, cinematic",
                    "width": 832,
                    "height": 480,
                    "num_frames": 81,
                    "num_inference_steps": 50,
                    "seed": 42,
                    "cache": {"strategy": "magcache", "params": {"threshold": 0.12, "max_skip_steps": 2}},
                    "webhook_url": "https://example.com/hooks/skipstep",
                    "webhook_events": ["job.succeeded", "job.failed"],
                }
            ]
        },
    )

    model: str | None = Field(default=None, description="A configured model (`GET /models`); default: the first.")
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    width: int | None = Field(
        default=None, ge=16, le=1920, multiple_of=SPATIAL_MULTIPLE, description="Default: the model's."
    )
    height: int | None = Field(
        default=None, ge=16, le=1920, multiple_of=SPATIAL_MULTIPLE, description="Default: the model's."
    )
    num_frames: int | None = Field(
        default=None, ge=1, le=257, description="4k+1 (17, 33, 81, ...). Default: the model's."
    )
    num_inference_steps: int | None = Field(default=None, ge=2, le=200, description="Default: the model's.")
    guidance_scale: float = Field(default=5.0, ge=0, le=20)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Random when absent; the job records it.")
    fps: int = Field(default=16, ge=1, le=60)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    compare: bool = Field(default=False, description="Also run uncached to measure fidelity and the real speedup.")
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_events: list[WebhookEvent] | None = Field(default=None, description=f"Default: {DEFAULT_EVENTS}.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("must not be blank")
        return prompt

    @field_validator("num_frames")
    @classmethod
    def _frames_rule(cls, frames: int | None) -> int | None:
        if frames is not None and frames % TEMPORAL_MULTIPLE != 1:
            raise ValueError(f"must be {TEMPORAL_MULTIPLE}k+1 (e.g. 17, 33, 81)")
        return frames

    @field_validator("webhook_url")
    @classmethod
    def _url_syntax(cls, url: str | None) -> str | None:
        if url is not None:
            # Syntax only: whether private addresses are allowed is a setting, which the submit route applies.
            check_url_syntax(url, allow_private=True)
        return url

    @field_validator("webhook_events")
    @classmethod
    def _events_need_url(cls, events: list[WebhookEvent] | None, info: ValidationInfo) -> list[WebhookEvent] | None:
        if events and info.data.get("webhook_url") is None:
            raise ValueError("needs webhook_url")
        return events

    def fingerprint(self) -> str:
        """Identifies the body for Idempotency-Key checks (same key, different body: a conflict)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def job_fields(self, default: Shape) -> dict[str, Any]:
        """The job row's columns, with the model's defaults and a random seed filled in."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "width": self.width or default.width,
            "height": self.height or default.height,
            "num_frames": self.num_frames or default.num_frames,
            "num_inference_steps": self.num_inference_steps or default.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed if self.seed is not None else secrets.randbelow(2**31),
            "fps": self.fps,
            "cache_strategy": self.cache.strategy,
            "cache_params": self.cache.params,
            "cache_profile": self.cache.profile,
            "compare": self.compare,
            "webhook_url": self.webhook_url,
            "webhook_events": list(self.webhook_events or (DEFAULT_EVENTS if self.webhook_url else [])),
        }


class JobPage(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
