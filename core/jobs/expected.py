"""What a job is expected to do, known before it runs: for strategies whose schedule follows from a
calibration profile (MagCache; TaoCache; TeaCache where the profile holds the embedding changes for the
job's steps), the computed and skipped calls per branch and the ideal speedup, with a denoise time estimated
from recent jobs of the same model, shape and strategy; and, while it is queued, when it may start.

Pure Python on the profile's numbers: the API process computes this without the engine.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.caching.profiles import Profile, ProfileStore, closest, config_signature
from core.contract import examples
from core.contract.experts import expert_steps, qualified
from core.contract.frontier import Choice
from core.contract.loras import adapter_key
from core.contract.models import ModelInfo
from core.contract.request import JobRequest
from core.contract.schedules import magcache_schedule, taocache_branch, taocache_signals, teacache_schedule
from core.contract.shapes import Shape
from core.contract.strategies import MagCacheParams, TeaCacheParams
from core.db import Job, JobStatus, utcnow
from core.errors import CacheConfigError
from core.jobs import dispatch

# How many of the latest finished jobs an estimate reads.
RECENT_JOBS = 20


class ExpectedBranch(BaseModel):
    computed: int = Field(description="Steps whose transformer call will run for this CFG branch.", examples=[31])
    skipped: int = Field(description="Steps that will reuse the cached residual instead.", examples=[19])
    schedule: str = Field(
        description="One character per step: C computed, . cached residual reused.", examples=[examples.SCHEDULE]
    )


class Expected(BaseModel):
    strategy: str = Field(description="The cache strategy the schedule is planned for.", examples=["magcache"])
    profile: str | None = Field(
        description="The calibration profile the schedule follows from; null where the schedule is not known ahead "
        "(an `auto` job whose chosen strategy decides as it runs).",
        examples=[examples.PROFILE],
    )
    steps_total: int = Field(description="Denoising steps of the job.", examples=[50])
    branches: dict[str, ExpectedBranch] | None = Field(
        description="Per CFG branch (`cond`, `uncond`; `cond` alone without guidance); for a model with two "
        "experts (Wan2.2 A14B), per expert and branch (`high_noise/cond`, ..., `low_noise/uncond`); null with "
        "`profile`.",
        examples=[{"cond": examples.BRANCH, "uncond": examples.BRANCH}],
    )
    ideal_speedup: float | None = Field(
        description="Transformer calls over computed calls; null with `profile`.", examples=[1.6129]
    )
    auto: Choice | None = Field(
        default=None,
        description="For `cache.strategy: auto`: the target, the setting chosen from the model's measured frontier "
        "with its predicted speedup and fidelity, and why (or why it fell back to no cache); null otherwise.",
    )
    estimated_denoise_seconds: float | None = Field(
        description="Expected computed calls times the median seconds per computed call of recent jobs of the "
        "same model, shape and strategy; null when there are none.",
        examples=[65.1],
    )
    estimate_jobs: int = Field(description="How many recent jobs the estimate is based on.", examples=[12])
    note: str | None = Field(
        default=None,
        description="What the schedule's basis lacks: for a job with LoRA adapters, that no profile was measured with "
        "them and the base model's is used; null otherwise.",
        examples=["no calibration profile was measured with LoRAs claymation:0.8; planned from the base model's"],
    )


def expected(
    session: Session,
    request: JobRequest,
    shape: Shape,
    model: str,
    info: ModelInfo,
    profiles: ProfileStore,
    choice: Choice | None = None,
) -> Expected | None:
    """The job's schedule as the worker will plan it, and for an ``auto`` job what was chosen (``request`` is then
    the chosen setting); None where nothing is known ahead."""
    strategy = request.cache.strategy
    schedule, profile = None, None
    if info.family is not None:  # else nothing describes the model yet
        branches = info.family.branches(request.guidance_scale > 1.0)
        profile = _profile(request, shape, info, profiles)
        if profile is not None:
            schedule = _expert_schedules(strategy, request.cache.parsed_params(), profile, branches, shape, info)
    if schedule is None or profile is None:
        if choice is None:
            return None
        return Expected(
            strategy=strategy,
            profile=None,
            steps_total=shape.num_inference_steps,
            branches=None,
            ideal_speedup=None,
            auto=choice,
            estimated_denoise_seconds=choice.predicted_denoise_seconds,
            estimate_jobs=0,
        )
    note = None
    if adapter_key(profile.loras) != adapter_key(request.loras):
        measured = f"LoRAs {adapter_key(profile.loras)}" if profile.loras else "the base model"
        note = (
            f"no calibration profile was measured with LoRAs {adapter_key(request.loras)}; planned from "
            f"{profile.name}, measured with {measured}"
        )
    computed = sum(sum(decisions) for decisions in schedule.values())
    total = sum(len(decisions) for decisions in schedule.values())
    per_call = seconds_per_computed_call(session, model, shape, strategy)
    return Expected(
        strategy=strategy,
        profile=profile.name,
        steps_total=shape.num_inference_steps,
        branches={
            branch: ExpectedBranch(
                computed=sum(decisions),
                skipped=len(decisions) - sum(decisions),
                schedule="".join("C" if d else "." for d in decisions),
            )
            for branch, decisions in schedule.items()
        },
        ideal_speedup=round(total / computed, 4),
        auto=choice,
        estimated_denoise_seconds=round(statistics.median(per_call) * computed, 3) if per_call else None,
        estimate_jobs=len(per_call),
        note=note,
    )


def _expert_schedules(
    strategy: str, params: Any, profile: Profile, branches: Sequence[str], shape: Shape, info: ModelInfo
) -> dict[str, list[bool]] | None:
    """The schedule of every cache branch: each expert's (two for Wan2.2 A14B, named ``<expert>/<branch>``)
    planned over the steps it runs from its own tables of the profile, as the worker plans it
    (core.caching.experts)."""
    experts = expert_steps(info.pipeline, shape.num_inference_steps)
    if experts is None:
        return None
    schedules: dict[str, list[bool]] = {}
    for expert, steps in experts:
        part = _schedule(
            strategy,
            params,
            profile.for_expert(expert),
            branches,
            replace(shape, num_inference_steps=len(steps)),
            info,
        )
        if part is None:
            return None
        schedules |= {qualified(expert, branch): decisions for branch, decisions in part.items()}
    return schedules


def _schedule(
    strategy: str, params: Any, profile: Profile, branches: Sequence[str], shape: Shape, info: ModelInfo
) -> dict[str, list[bool]] | None:
    """Per branch, the decisions the worker's strategy will take from this profile; None where the profile
    lacks what it needs (the worker then fails the job or, for TeaCache, decides on-line)."""
    steps = shape.num_inference_steps
    if strategy == "magcache" and profile.magcache is not None and set(branches) <= set(profile.magcache):
        return magcache_schedule(params, profile.magcache, branches, steps)
    if strategy == "teacache":
        changes = _teacache_changes(profile, params.use_ret_steps, shape, info)
        if changes is None:
            return None
        compared = "timestep_proj" if params.use_ret_steps else "temb"
        return teacache_schedule(params, profile.teacache[compared], changes, branches)
    if strategy == "taocache" and profile.taocache is not None and set(branches) <= set(profile.taocache):
        early = None
        if params.early != "none":
            # The early rule runs with its published defaults (core.caching.taocache).
            defaults = MagCacheParams() if params.early == "magcache" else TeaCacheParams()
            early = _schedule(params.early, defaults, profile, branches, shape, info)
            if early is None:
                return None
        return {
            branch: taocache_branch(
                params,
                taocache_signals(profile.taocache[branch].cosine, profile.taocache[branch].norm_ratio, steps),
                early[branch] if early is not None else None,
                "",
            )[0]
            for branch in branches
        }
    return None


def _profile(request: JobRequest, shape: Shape, info: ModelInfo, profiles: ProfileStore) -> Profile | None:
    """The profile the worker will use: the named one, else the nearest of those the model's worker holds for its
    transformer (as it published them), else of this host's for the transformer's config, else (a preset that
    nothing has built yet) of the profiles recorded for that preset; of each, those measured with the job's LoRA
    adapters, else the base model's."""
    needs = request.cache.info.needs
    if needs is None:
        return None
    held = [Profile.model_validate(document) for document in info.profiles or ()]
    try:
        if request.cache.profile is not None:
            named = [p for p in held if p.name == request.cache.profile]
            return named[0] if named else profiles.get(request.cache.profile)
    except CacheConfigError:
        return None  # the worker fails the job and says why
    if info.profiles is not None:
        return closest(held, shape, needs, request.loras)
    if info.transformer:
        return profiles.nearest(config_signature(info.transformer), shape, needs, request.loras)
    return closest([p for p in profiles.all() if p.model == info.source], shape, needs, request.loras)


def _teacache_changes(profile: Profile, use_ret_steps: bool, shape: Shape, info: ModelInfo) -> list[float] | None:
    """The compared embedding's per-step changes, where the profile recorded them at the job's timesteps:
    the same step count (and, for families whose timesteps shift with the video size, the same size)."""
    compared = "timestep_proj" if use_ret_steps else "temb"
    if info.boundary_ratio is not None:
        return None  # each expert's share of the steps: the worker computes its embedding changes
    samples = (profile.teacache_samples or {}).get(compared)
    if (
        not samples
        or compared not in (profile.teacache or {})
        or profile.num_inference_steps != shape.num_inference_steps
    ):
        return None
    same_size = (profile.width, profile.height, profile.num_frames) == (shape.width, shape.height, shape.num_frames)
    if info.family.name != "wan" and not same_size:
        return None
    # Samples run prompt after prompt; the input changes are the same for each (timesteps alone).
    return [change for change, _ in samples[: shape.num_inference_steps - 1]]


def seconds_per_computed_call(session: Session, model: str, shape: Shape, strategy: str | None = None) -> list[float]:
    """Recent succeeded jobs' denoise seconds per computed transformer call at this model and shape (and strategy,
    if given)."""
    query = select(Job.denoise_seconds, Job.computed_calls).where(
        Job.model == model,
        Job.status == JobStatus.succeeded,
        Job.width == shape.width,
        Job.height == shape.height,
        Job.num_frames == shape.num_frames,
        Job.num_inference_steps == shape.num_inference_steps,
        Job.computed_calls > 0,
    )
    if strategy is not None:
        query = query.where(Job.cache_strategy == strategy)
    rows = session.execute(query.order_by(Job.finished_at.desc()).limit(RECENT_JOBS)).all()
    return [seconds / calls for seconds, calls in rows if seconds]


@dataclass(frozen=True)
class Standing:
    """Where a queued job stands: its queue position, whether it waits for a worker of its model to start, and
    when it may start."""

    position: int | None
    waiting_for_worker: bool
    estimated_start_at: datetime | None
    idle_workers: int = 0  # live workers of its model that hold no job and take one


def standing(session: Session, job: Job, heartbeat_seconds: float) -> Standing:
    """A queued job's standing (all empty for any other job)."""
    place = dispatch.place(session, job, heartbeat_seconds)
    if place.position is None:
        return Standing(None, False, None)
    start = estimated_start(session, job, place.position, place.serving)
    return Standing(place.position, place.serving == 0, start, place.idle)


def estimated_start(session: Session, job: Job, position: int, live: int) -> datetime | None:
    """When a queued job may start: the jobs ahead of it spread over the ``live`` workers of its model that
    take jobs (workers.serving_count), each taking the median run time of the model's recent jobs. None while
    it waits for a worker or no job of the model has finished yet."""
    if live == 0:
        return None
    durations = _recent_run_seconds(session, job.model)
    if not durations:
        return None
    running = session.scalar(select(func.count()).where(Job.model == job.model, Job.status == JobStatus.running)) or 0
    ahead, free = position - 1, max(live - running, 0)
    now = utcnow()
    if ahead < free:
        return now
    rounds = (ahead - free) // live + 1
    return now + timedelta(seconds=rounds * statistics.median(durations))


def _recent_run_seconds(session: Session, model: str) -> list[float]:
    rows = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(Job.model == model, Job.status == JobStatus.succeeded, Job.started_at.isnot(None))
        .order_by(Job.finished_at.desc())
        .limit(RECENT_JOBS)
    ).all()
    return [(finished - started).total_seconds() for started, finished in rows if finished is not None]


def stored(figures: Expected | None) -> dict[str, Any] | None:
    return figures.model_dump(mode="json") if figures is not None else None
