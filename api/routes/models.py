"""The models this service serves, as a resource: what each accepts and how its workers and queue stand."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from annotated_types import Ge
from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import KeyDep, SessionDep, SettingsDep
from core.caching.profiles import Profile, ProfileStore, applicable_strategies
from core.contract import examples
from core.contract.experts import HIGH_NOISE, LOW_NOISE
from core.contract.frontier import Frontier
from core.contract.models import ModelInfo, model_key
from core.contract.request import JobRequest
from core.contract.shapes import FamilyRules
from core.contract.strategies import STRATEGIES
from core.db import utcnow
from core.jobs import catalogue, fleet, frontier, loras, workers
from core.settings import Settings

router = APIRouter(prefix="/models", tags=["models"])

# The setting that caps each size field of a request.
MAX_SETTINGS = {
    "width": "request_max_side",
    "height": "request_max_side",
    "num_frames": "request_max_frames",
    "num_inference_steps": "request_max_steps",
}


class ShapeView(BaseModel):
    width: int = Field(description="Pixels.", examples=[832])
    height: int = Field(description="Pixels.", examples=[480])
    num_frames: int = Field(description="Frames of the video.", examples=[81])
    num_inference_steps: int = Field(description="Denoising steps.", examples=[50])


class Bounds(BaseModel):
    min: int = Field(description="Smallest value `POST /jobs` accepts.", examples=[16])
    max: int = Field(
        description="Largest value `POST /jobs` accepts (a SKIPSTEP_REQUEST_MAX_* setting).", examples=[1920]
    )
    rule: str | None = Field(
        description="The model family's rule, where it has one; null otherwise.", examples=["a multiple of 16"]
    )


class LimitsView(BaseModel):
    width: Bounds = Field(description="Pixels.")
    height: Bounds = Field(description="Pixels.")
    num_frames: Bounds = Field(description="Frames.")
    num_inference_steps: Bounds = Field(description="Denoising steps.")


class ProfileView(BaseModel):
    name: str = Field(description="What a job's `cache.profile` names it by.", examples=[examples.PROFILE])
    calibrated_on: str = Field(description="The model the profile was calibrated on.", examples=["Wan2.1-T2V-1.3B"])
    shape: ShapeView = Field(description="The shape it was calibrated at.")
    strategies: list[str] = Field(
        description="The strategies whose data the profile carries.", examples=[["teacache", "magcache"]]
    )


class StrategyView(BaseModel):
    name: str = Field(description="What a job's `cache.strategy` names it by.", examples=["magcache"])
    summary: str = Field(description="How it decides to skip.", examples=[STRATEGIES["magcache"].summary])
    needs_calibration: bool = Field(description="It reads a calibration profile.", examples=[True])
    available: bool = Field(
        description="Needs no calibration, or a profile for the model's transformer has its data (the profiles "
        "its worker holds; before any worker has described the model, those of the API host for its family).",
        examples=[True],
    )


class WorkersView(BaseModel):
    live: int = Field(description="Workers of this model heard from within three heartbeats.", examples=[2])
    idle: int = Field(description="Live workers holding no job (warming ones not counted).", examples=[1])
    warming: int = Field(
        description="Live workers still compiling and warming up their model (SKIPSTEP_COMPILE): they take jobs "
        "once warm; 0 when every live worker is warm.",
        examples=[0],
    )
    devices: list[str] = Field(
        description="host/device of each live worker, with its pinned GPUs (admin keys only; empty otherwise); a "
        "worker spanning several devices is one entry naming each (`host/cuda:0+cuda:1 (ulysses) (GPU 2,3)`).",
        examples=[[f"{examples.HOSTNAME}/cuda:0 (GPU 0)", f"{examples.HOSTNAME}/cuda:0+cuda:1 (ulysses) (GPU 1,2)"]],
    )
    device_count: int = Field(
        default=0,
        description="Devices the live workers hold in all: a worker spanning several devices counts each.",
        examples=[3],
    )


class QueueView(BaseModel):
    queued: int = Field(description="Jobs of this model waiting for a worker.", examples=[4])
    running: int = Field(description="Jobs of this model running.", examples=[1])
    oldest_queued_seconds: float = Field(
        description="How long the oldest queued job has waited; 0 when none waits.", examples=[37.5]
    )
    waiting_for_worker: bool = Field(
        description="No live worker takes this model's jobs: they wait for one to start.", examples=[False]
    )


class RecentView(BaseModel):
    window_seconds: float = Field(
        description="The figures cover jobs finished within this many seconds.", examples=[3600.0]
    )
    succeeded: int = Field(description="Jobs that succeeded in the window.", examples=[42])
    failed: int = Field(description="Jobs that failed in the window.", examples=[1])
    jobs_per_hour: float = Field(description="Succeeded jobs per hour over the window.", examples=[42.0])
    succeeded_by_strategy: dict[str, int] = Field(
        description="Succeeded jobs per cache strategy.", examples=[{"magcache": 30, "none": 12}]
    )
    wait_mean_seconds: float | None = Field(
        description="Submit to start, jobs finished in the window; null when there are none.", examples=[18.4]
    )
    wait_p95_seconds: float | None = Field(
        description="95th percentile of the same waits; null when there are none.", examples=[61.0]
    )
    denoise_mean_seconds: float | None = Field(
        description="Mean denoising time of the jobs that succeeded in the window; null when there are none.",
        examples=[71.2],
    )
    speedup_mean: float | None = Field(
        description="Mean speedup of the jobs that succeeded in the window; null when there are none.",
        examples=[1.48],
    )


class ModelView(BaseModel):
    name: str = Field(description="What a job's `model` names it by.", examples=[examples.MODEL])
    default: bool = Field(description="Jobs that name no model run on this one.", examples=[True])
    family: str | None = Field(
        description="wan, wan2.2 (Wan2.2's 16x VAE), ltx, hunyuan; null while nothing describes the model: no "
        "worker of it has started yet "
        "and its files are not readable by the API (its jobs must then give every size, and their size rules are "
        "checked by the worker: `pending_checks`).",
        examples=["wan"],
    )
    default_shape: ShapeView | None = Field(description="Null while nothing describes the model (see `family`).")
    image_input: Literal["required", "optional"] | None = Field(
        description="Whether the model takes a first-frame image: `required` (image-to-video), `optional` (text, "
        "or text and image, to video: Wan2.2 TI2V), null (text alone, or not known while nothing describes it).",
        examples=["required"],
    )
    experts: list[str] = Field(
        description="The transformers a job's steps are split between (Wan2.2 A14B: `high_noise`, `low_noise`); "
        "empty for one. Cache figures of such a model are per expert and branch (`high_noise/cond`, ...).",
        examples=[["high_noise", "low_noise"]],
    )
    described_by: str | None = Field(
        description="The worker (host:pid) whose description of the model the API uses (the latest to start); null "
        "when it is read from configuration (a preset, or the model's files on the API host).",
        examples=[examples.WORKER],
    )
    described_at: datetime | None = Field(
        description="When that worker described it; null with `described_by`.", examples=[examples.STARTED_AT]
    )
    limits: LimitsView = Field(description="What `POST /jobs` accepts for each size field of this model.")
    strategies: list[StrategyView] = Field(description="Every cache strategy, and whether it applies here.")
    profiles: list[ProfileView] = Field(
        description="Calibration profiles for the model: those its worker holds for its transformer; before any "
        "worker has described it, those of the API host for its family."
    )
    frontiers: list[Frontier] = Field(
        default_factory=list,
        description="Its measured speed/fidelity frontiers (`skipstep frontier`), one per shape and step count: each "
        "setting's computed calls, measured speedup and fidelity against uncached runs of the same seeds (worst "
        "and mean, receipts folded in), the Pareto front marked. What `cache.strategy: auto` chooses from.",
    )
    loras: list[str] = Field(
        default_factory=list,
        description="The LoRA adapters registered for it, by name: what a job's `loras` may name.",
        examples=[["claymation"]],
    )
    workers: WorkersView = Field(description="Its live workers.")
    queue: QueueView = Field(description="Its jobs waiting and running.")
    recent: RecentView = Field(description="How its recent jobs went.")


def _profiles(info: ModelInfo, store: list[Profile]) -> list[Profile]:
    """The calibration profiles for the model: those its worker holds for its transformer, as published; else
    those of this host for its family."""
    if info.profiles is not None:
        return [Profile.model_validate(document) for document in info.profiles]
    return [p for p in store if info.family and p.transformer.get("class") == info.family.transformer_class]


def _bounds(field: str, rule: str | None, settings: Settings) -> Bounds:
    """A request field's bounds as ``POST /jobs`` enforces them."""
    low = next(item.ge for item in JobRequest.model_fields[field].metadata if isinstance(item, Ge))
    return Bounds(min=low, max=getattr(settings, MAX_SETTINGS[field]), rule=rule)


def _limits(family: FamilyRules | None, settings: Settings) -> LimitsView:
    spatial = f"a multiple of {family.spatial_multiple}" if family else None
    temporal = f"{family.temporal_multiple}k+1" if family else None
    return LimitsView(
        width=_bounds("width", spatial, settings),
        height=_bounds("height", spatial, settings),
        num_frames=_bounds("num_frames", temporal, settings),
        num_inference_steps=_bounds("num_inference_steps", None, settings),
    )


@router.get("", response_model=list[ModelView])
def list_models(key: KeyDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Every configured model, the default first: what a job for it accepts, which cache strategies and
    calibration profiles apply, its live workers, its queue and its last hour."""
    sources = settings.model_sources
    live = workers.by_model(session, settings.heartbeat_seconds)
    figures = fleet.figures(session, sources)
    store = ProfileStore(settings.profiles_dir).all()
    now = utcnow()
    views = []
    for name in sources:
        info = catalogue.describe(session, name, settings)
        family = info.family
        own = _profiles(info, store)
        applicable = info.strategies if info.strategies is not None else applicable_strategies(own)
        pool = live.get(name, workers.ModelWorkers(0, 0, []))
        numbers = figures[name]
        views.append(
            ModelView(
                name=name,
                default=name == settings.default_model,
                family=family.name if family else None,
                default_shape=ShapeView(**vars(info.default_shape)) if info.default_shape else None,
                image_input=info.image_input,
                experts=[HIGH_NOISE, LOW_NOISE] if info.boundary_ratio is not None else [],
                described_by=info.described_by,
                described_at=info.described_at,
                limits=_limits(family, settings),
                strategies=[
                    StrategyView(
                        name=strategy.name,
                        summary=strategy.summary,
                        needs_calibration=strategy.needs is not None,
                        available=strategy.name in applicable,
                    )
                    for strategy in STRATEGIES.values()
                ],
                profiles=[
                    ProfileView(
                        name=p.name,
                        calibrated_on=p.model,
                        shape=ShapeView(
                            width=p.width,
                            height=p.height,
                            num_frames=p.num_frames,
                            num_inference_steps=p.num_inference_steps,
                        ),
                        strategies=[i.name for i in STRATEGIES.values() if i.needs and getattr(p, i.needs) is not None],
                    )
                    for p in own
                ],
                frontiers=frontier.frontiers(session, model_key(info.source)),
                loras=[lora.name for lora in loras.registered(session, name)],
                workers=WorkersView(
                    live=pool.live,
                    idle=pool.idle,
                    warming=pool.warming,
                    devices=pool.devices if key.is_admin else [],
                    device_count=pool.device_count,
                ),
                queue=QueueView(
                    queued=numbers.queued,
                    running=numbers.running,
                    oldest_queued_seconds=numbers.oldest_queued_seconds(now),
                    waiting_for_worker=workers.waiting_for_worker(session, name, settings.heartbeat_seconds),
                ),
                recent=RecentView(
                    window_seconds=fleet.WINDOW.total_seconds(),
                    succeeded=numbers.succeeded,
                    failed=numbers.failed,
                    jobs_per_hour=numbers.jobs_per_hour,
                    succeeded_by_strategy=numbers.succeeded_by_strategy,
                    wait_mean_seconds=numbers.wait_mean_seconds,
                    wait_p95_seconds=numbers.wait_p95_seconds,
                    denoise_mean_seconds=numbers.denoise_mean_seconds,
                    speedup_mean=numbers.speedup_mean,
                ),
            )
        )
    return views
