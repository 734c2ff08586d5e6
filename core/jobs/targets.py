"""``auto`` jobs: at submit, the setting that meets the job's target, from the frontier measured for its model
(core.jobs.frontier), or no cache with the reason where no frontier covers the job."""

from __future__ import annotations

import statistics

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.contract.frontier import Choice, Frontier, choose
from core.contract.models import ModelInfo, model_key
from core.contract.request import JobRequest
from core.contract.shapes import Shape
from core.contract.strategies import AUTO, CacheSpec
from core.db import Job, JobStatus
from core.jobs import frontier
from core.jobs.expected import RECENT_JOBS


def resolve(
    session: Session, request: JobRequest, shape: Shape, model: str, info: ModelInfo
) -> tuple[JobRequest, Choice | None]:
    """The request with ``auto`` replaced by the chosen setting, and the choice; other requests as they are."""
    target = request.cache.target
    if request.cache.strategy != AUTO or target is None:
        return request, None
    key = model_key(info.source)
    covering, why = frontier.covering(session, key, shape)
    uncached = None
    if target.deadline_seconds is not None and info.family is not None:
        calls = len(info.family.branches(request.guidance_scale > 1.0)) * shape.num_inference_steps
        uncached = _uncached_seconds(session, model, shape, calls, covering)
    choice = choose(covering, target, uncached, why)
    chosen = CacheSpec(strategy=choice.strategy, params=choice.params)
    return request.model_copy(update={"cache": chosen}), choice


def _uncached_seconds(
    session: Session, model: str, shape: Shape, calls: int, covering: Frontier | None
) -> float | None:
    """The job's uncached denoising time: recent jobs' seconds per computed call at this shape times its calls;
    else the frontier's uncached runs, scaled by tokens where it was measured at another size."""
    rows = session.execute(
        select(Job.denoise_seconds, Job.computed_calls)
        .where(
            Job.model == model,
            Job.status == JobStatus.succeeded,
            Job.width == shape.width,
            Job.height == shape.height,
            Job.num_frames == shape.num_frames,
            Job.num_inference_steps == shape.num_inference_steps,
            Job.computed_calls > 0,
        )
        .order_by(Job.finished_at.desc())
        .limit(RECENT_JOBS)
    ).all()
    per_call = [seconds / computed for seconds, computed in rows if seconds]
    if per_call:
        return round(statistics.median(per_call) * calls, 3)
    if covering is None or not covering.points:
        return None
    scale = (shape.width * shape.height * shape.num_frames) / (covering.width * covering.height * covering.num_frames)
    return round(covering.points[0].baseline_denoise_seconds * scale, 3)
