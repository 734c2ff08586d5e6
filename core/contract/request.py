"""A generation request: the one model every entry point derives from.

``GenerationRequest`` is what the engine runs (``skipstep generate``, calibration, the worker);
``JobRequest`` adds what the service needs (the model to run it, webhooks) and is the body of
``POST /jobs``, what ``skipstep submit`` sends, what a job row maps to and what ``GET /jobs/{id}``
and webhook events show as ``input``. The upper limits are settings (``SKIPSTEP_REQUEST_MAX_*``); the
size rules of the model's family are applied with ``shape()`` once the model is known. The validators that
read settings are the server's rules for what it receives: a job's ``input`` as clients read it back is
``JobInput``, the same fields without them, so that a client parses any server's answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from core.contract import examples
from core.contract.jobs import DEFAULT_EVENTS
from core.contract.loras import LoraSpec
from core.contract.shapes import SIZE_FIELDS, FamilyRules, Shape
from core.contract.strategies import CacheSpec
from core.errors import InvalidRequest
from core.settings import get_settings
from core.webhooks.addresses import check_url_syntax

WebhookEventName = Literal["job.started", "job.succeeded", "job.failed", "job.canceled", "job.fidelity"]


def _limit(keyword: str, setting: str) -> Callable[[dict[str, Any]], None]:
    """Shows a limit from the settings in the JSON schema, as the settings are when the schema is made."""

    def show(schema: dict[str, Any]) -> None:
        # Optional fields are anyOf [int, null]: the limit belongs to the int.
        target = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
        target[keyword] = getattr(get_settings(), setting)

    return show


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        description="What the video shows; not blank.",
        examples=[examples.PROMPT],
        json_schema_extra=_limit("maxLength", "request_max_prompt_chars"),
    )
    negative_prompt: str = Field(
        default="",
        description="What the video should not show; empty: nothing.",
        examples=["blurry, low quality, watermark"],
        json_schema_extra=_limit("maxLength", "request_max_prompt_chars"),
    )
    # None: the model's default shape (small for presets, the family's native size otherwise).
    width: int | None = Field(
        default=None,
        ge=16,
        description="Pixels; the family's multiple (16 for Wan, 32 for LTX). Default: the model's.",
        examples=[832],
        json_schema_extra=_limit("maximum", "request_max_side"),
    )
    height: int | None = Field(
        default=None,
        ge=16,
        description="Pixels; the family's multiple (16 for Wan, 32 for LTX). Default: the model's.",
        examples=[480],
        json_schema_extra=_limit("maximum", "request_max_side"),
    )
    num_frames: int | None = Field(
        default=None,
        ge=1,
        description="The family's rule: 4k+1 for Wan (17, 33, 81), 8k+1 for LTX. Default: the model's.",
        examples=[81],
        json_schema_extra=_limit("maximum", "request_max_frames"),
    )
    num_inference_steps: int | None = Field(
        default=None,
        ge=2,
        description="Denoising steps. Default: the model's.",
        examples=[50],
        json_schema_extra=_limit("maximum", "request_max_steps"),
    )
    guidance_scale: float = Field(
        default=5.0,
        ge=0,
        le=20,
        description="Classifier-free guidance strength; at most 1 turns it off and the negative prompt is not "
        "used (HunyuanVideo: the transformer's embedded guidance).",
        examples=[5.0],
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Seed of the initial noise.", examples=[42])
    fps: int = Field(default=16, ge=1, le=60, description="Frames per second of the MP4.", examples=[16])
    cache: CacheSpec = Field(
        default_factory=CacheSpec,
        description="The timestep-cache strategy, its parameters and calibration profile; default: `none`.",
        examples=[{"strategy": "magcache", "params": {"threshold": 0.12, "max_skip_steps": 2}}],
    )
    compare: bool = Field(
        default=False,
        description="Also run uncached with the same seed and report fidelity (`metrics.fidelity`). The baseline "
        "runs after the job, under the same cancel and time limit, and counts in `progress` and in the key's cost "
        "ceiling (twice the job's cost).",
        examples=[True],
    )

    loras: list[LoraSpec] = Field(
        default_factory=list,
        description="LoRA adapters registered for the job's model (`GET /models`: `loras`) to run with, each with "
        "its weight; empty: the base model's weights.",
        examples=[[{"name": "claymation", "weight": 0.8}]],
        json_schema_extra=_limit("maxItems", "request_max_loras"),
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("must not be blank")
        return _at_most_chars(prompt, get_settings().request_max_prompt_chars)

    @field_validator("negative_prompt")
    @classmethod
    def _negative_length(cls, text: str) -> str:
        return _at_most_chars(text, get_settings().request_max_prompt_chars)

    @field_validator("width", "height")
    @classmethod
    def _side_limit(cls, side: int | None) -> int | None:
        return _at_most(side, get_settings().request_max_side)

    @field_validator("num_frames")
    @classmethod
    def _frames_limit(cls, frames: int | None) -> int | None:
        return _at_most(frames, get_settings().request_max_frames)

    @field_validator("num_inference_steps")
    @classmethod
    def _steps_limit(cls, steps: int | None) -> int | None:
        return _at_most(steps, get_settings().request_max_steps)

    @field_validator("loras")
    @classmethod
    def _loras_limit(cls, loras: list[LoraSpec]) -> list[LoraSpec]:
        limit = get_settings().request_max_loras
        if len(loras) > limit:
            raise ValueError(f"at most {limit} LoRAs per job")
        names = [lora.name for lora in loras]
        if len(set(names)) < len(names):
            raise ValueError("each LoRA at most once")
        return loras

    @classmethod
    def at(cls, shape: Shape, prompt: str, **fields: Any) -> GenerationRequest:
        """A request for ``prompt`` at exactly ``shape`` (``fields`` may replace its step count)."""
        return cls(prompt=prompt, **({name: getattr(shape, name) for name in SIZE_FIELDS} | fields))

    def shape(self, family: FamilyRules | None, default: Shape | None) -> Shape:
        """The concrete shape, checked against the family's size rules (InvalidRequest names every field). For a
        model that nothing describes yet (``None``: no worker has, and its files are not readable here) every
        size must be given, and the family's rules are left to the worker that claims the job."""
        if default is None:
            missing = [name for name in SIZE_FIELDS if getattr(self, name) is None]
            if missing:
                rule = "required until a worker of this model has started: its default is not known yet"
                first, *more = [(name, rule) for name in missing]
                raise InvalidRequest(*first, *more)
        shape = Shape(**{name: getattr(self, name) or getattr(default, name) for name in SIZE_FIELDS})
        problems = family.violations(shape) if family is not None else []
        if problems:
            raise InvalidRequest(*problems[0], *problems[1:])
        return shape


class JobRequest(GenerationRequest):
    """A job for the service: ``POST /jobs``'s body, and a job's ``input`` as the API shows it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": examples.PROMPT,
                    "width": 832,
                    "height": 480,
                    "num_frames": 81,
                    "num_inference_steps": 50,
                    "seed": 42,
                    "cache": {"strategy": "magcache", "params": {"threshold": 0.12, "max_skip_steps": 2}},
                    "webhook_url": examples.WEBHOOK_URL,
                    "webhook_events": ["job.succeeded", "job.failed"],
                }
            ]
        },
    )

    model: str | None = Field(
        default=None,
        description="A model the service serves (`GET /models`, SKIPSTEP_MODELS); default: the first.",
        examples=[examples.MODEL],
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Seed of the initial noise; random when absent, and the job records it.",
        examples=[42],
    )
    priority: int = Field(
        default=0,
        ge=-10,
        le=10,
        description="Order among this API key's own queued jobs (higher first); keys still take turns.",
        examples=[0],
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="http(s) URL the job's events are POSTed to, signed with the API key's webhook secret; it must "
        "resolve to a public address unless the service allows private ones. Absent: no webhooks.",
        examples=[examples.WEBHOOK_URL],
    )
    webhook_events: list[WebhookEventName] | None = Field(
        default=None,
        description=f"The events to send; needs webhook_url. Default: {[event.value for event in DEFAULT_EVENTS]}.",
        examples=[["job.succeeded", "job.failed"]],
    )

    @field_validator("model")
    @classmethod
    def _configured(cls, model: str | None) -> str | None:
        configured = get_settings().model_sources
        if model is not None and model not in configured:
            raise ValueError(f"unknown model {model!r}; configured: {', '.join(configured)}")
        return model

    @field_validator("webhook_url")
    @classmethod
    def _url_syntax(cls, url: str | None) -> str | None:
        if url is not None:
            # Syntax only: whether private addresses are allowed is a setting, which the submit path applies.
            check_url_syntax(url, allow_private=True)
        return url

    @field_validator("webhook_events")
    @classmethod
    def _events_need_url(
        cls, events: list[WebhookEventName] | None, info: ValidationInfo
    ) -> list[WebhookEventName] | None:
        if events and info.data.get("webhook_url") is None:
            raise ValueError("needs webhook_url")
        return events

    def fingerprint(self) -> str:
        """Identifies the body for Idempotency-Key checks (same key, different body: a conflict)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _at_most(value: Any, limit: int) -> Any:
    if value is not None and value > limit:
        raise ValueError(f"Input should be less than or equal to {limit}")
    return value


def _at_most_chars(text: str, limit: int) -> str:
    if len(text) > limit:
        raise ValueError(f"String should have at most {limit} characters")
    return text


# A job's request as a response shows it (``JobView.input``): JobRequest's fields and their contract rules, without
# the validators that read this machine's settings (its limits and models), which a client cannot know the
# server's of.
JobInput = create_model(
    "JobInput",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The request as the job runs it.",
    **{name: (field.annotation, field) for name, field in JobRequest.model_fields.items()},
)
