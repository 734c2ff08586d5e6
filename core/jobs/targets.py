"""``auto`` jobs: at submit, the setting that meets the job's target, from the frontier measured for its model
(core.jobs.frontier), or no cache with the reason where no frontier covers the job."""

from __future__ import annotations

import statistics

from sqlalchemy.orm import Session

from core.contract.frontier import Choice, Frontier, choose
from core.contract.loras import adapter_key
from core.contract.models import ModelInfo, model_key
from core.contract.request import JobRequest
from core.contract.shapes import Shape
from core.contract.strategies import AUTO, CacheSpec
from core.jobs import frontier
from core.jobs.expected import seconds_per_computed_call


def resolve(
    session: Session, request: JobRequest, shape: Shape, model: str, info: ModelInfo
) -> tuple[JobRequest, Choice | None]:
    """The request with ``auto`` replaced by the chosen setting, and the choice; other requests as they are."""
    target = request.cache.target
    if request.cache.strategy != AUTO or target is None:
        return request, None
    key = model_key(info.source)
    covering, why = frontier.covering(session, key, shape, adapter_key(request.loras))
    uncached = None
    if target.deadline_seconds is not None and info.family is not None:
        calls = len(info.family.branches(request.guidance_scale > 1.0)) * shape.num_inference_steps
        uncached = _uncached_seconds(session, model, shape, calls, covering)
    choice = choose(covering, target, uncached, why)
    if covering is not None and why:
        choice = choice.model_copy(update={"reason": f"{choice.reason} ({why})"})
    chosen = CacheSpec(strategy=choice.strategy, params=choice.params)
    return request.model_copy(update={"cache": chosen}), choice


def _uncached_seconds(
    session: Session, model: str, shape: Shape, calls: int, covering: Frontier | None
) -> float | None:
    """The job's uncached denoising time: recent jobs' seconds per computed call at this shape times its calls;
    else the frontier's uncached runs, scaled by tokens where it was measured at another size."""
    per_call = seconds_per_computed_call(session, model, shape)
    if per_call:
        return round(statistics.median(per_call) * calls, 3)
    if covering is None or not covering.points:
        return None
    scale = (shape.width * shape.height * shape.num_frames) / (covering.width * covering.height * covering.num_frames)
    return round(covering.points[0].baseline_denoise_seconds * scale, 3)
