"""A job row and its request, both ways: the one place that knows which column holds which field."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from core.contract.jobs import DEFAULT_EVENTS
from core.contract.loras import LoraSpec, adapter_set
from core.contract.request import JobRequest
from core.contract.shapes import Shape
from core.contract.strategies import CacheSpec
from core.db import Job


def new_job(request: JobRequest, shape: Shape, model: str, owner_id: uuid.UUID, **columns: Any) -> Job:
    """The row of a validated request, with the model's shape and a random seed where it named none."""
    events = request.webhook_events or ([event.value for event in DEFAULT_EVENTS] if request.webhook_url else [])
    return Job(
        owner_id=owner_id,
        model=model,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=shape.width,
        height=shape.height,
        num_frames=shape.num_frames,
        num_inference_steps=shape.num_inference_steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
        fps=request.fps,
        cache_strategy=request.cache.strategy,
        cache_params=request.cache.params,
        cache_profile=request.cache.profile,
        compare=request.compare,
        loras=adapter_set(request.loras),
        priority=request.priority,
        webhook_url=request.webhook_url,
        webhook_events=list(events),
        **columns,
    )


def request_of(job: Job) -> JobRequest:
    """The request a row holds, every default filled in. Not validated again: it was at submit, and a
    limit lowered since must not make older jobs unreadable."""
    return JobRequest.model_construct(
        model=job.model,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        num_frames=job.num_frames,
        num_inference_steps=job.num_inference_steps,
        guidance_scale=job.guidance_scale,
        seed=job.seed,
        fps=job.fps,
        cache=CacheSpec.model_construct(
            strategy=job.cache_strategy, params=job.cache_params, profile=job.cache_profile
        ),
        compare=job.compare,
        loras=[LoraSpec.model_construct(**entry) for entry in job.loras or ()],
        priority=job.priority,
        webhook_url=job.webhook_url,
        webhook_events=list(job.webhook_events),
    )
