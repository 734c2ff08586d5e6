"""One generation: encode the prompt, denoise with the request's cache strategy, decode.

Denoising runs through the model family's own diffusers pipeline (classifier-free guidance
as that pipeline does it); the cache is hooked into its transformer for the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel

from core.caching.base import CacheReport, ScheduleFigures, TimestepCache
from core.caching.experts import ExpertCache, ExpertCaches, expert_ranges
from core.caching.none import NoCache
from core.caching.profiles import ProfileStore
from core.caching.registry import build_cache
from core.contract.request import GenerationRequest
from core.contract.shapes import Shape
from core.errors import InvalidRequest
from core.fidelity import psnr, ssim
from core.models import LoadedModel


@dataclass(frozen=True)
class Progress:
    """Steps done of the whole generation: with ``compare`` the uncached baseline's steps follow the cached run's
    (``total`` is twice the step count); the calls are the cached run's."""

    step: int
    total: int
    computed_calls: int
    skipped_calls: int
    # A step of the uncached baseline of a ``compare`` run.
    baseline: bool = False


class Timings(BaseModel):
    text_encoding: float
    denoising: float
    vae_decode: float
    # The process's CPU seconds while denoising: on a CPU with one torch thread, the denoising work itself, which
    # other processes' load on the machine hardly changes (wall time it changes many times over).
    denoising_cpu: float


class Fidelity(BaseModel):
    psnr: float
    ssim: float
    baseline_denoise_seconds: float
    measured_speedup: float
    # What the frames were compared with: the uncached run of the same request, or a remix's source.
    baseline: Literal["uncached", "source"] = "uncached"


@dataclass
class GenerationResult:
    frames: np.ndarray  # float32 in [0, 1], (frames, height, width, 3)
    shape: Shape
    fps: int
    timings: Timings
    cache: CacheReport
    # The encoded prompts came from the model's prompt cache (text encoding skipped).
    prompt_cached: bool = False
    fidelity: Fidelity | None = None
    # The LoRA adapters that ran (core.models.lora.Adapters.apply); empty: the base weights.
    loras: list[dict[str, Any]] = field(default_factory=list)


ProgressCallback = Callable[[Progress], None]
PlanCallback = Callable[[ScheduleFigures | None], None]


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    profiles: ProfileStore,
    on_plan: PlanCallback | None = None,
    on_step: ProgressCallback | None = None,
    source: GenerationRequest | None = None,
    image: Image.Image | None = None,
) -> GenerationResult:
    """Generate; ``image`` is the first frame, already checked and sized to the job's shape (core.images).
    ``on_step`` sees every step, the baseline's of a ``compare`` run too, so whoever supervises the job (cancel,
    time limits, stall signs) supervises the baseline as well. The baseline is the uncached run of the same
    request, or, given a remix's ``source`` request, the source's frames (made again: the same request and seed
    give the same frames)."""
    shape = request.shape(model.family.rules, model.default_shape)
    steps = shape.num_inference_steps
    source_shape = source.shape(model.family.rules, model.default_shape) if source is not None else shape
    total = steps + source_shape.num_inference_steps if request.compare else steps
    caches = expert_caches(
        model,
        shape,
        lambda transformer, expert: build_cache(request.cache, transformer, shape, profiles, expert, request.loras),
    )

    def cached_step(progress: Progress) -> None:
        if on_step is not None:
            on_step(replace(progress, total=total))

    result = run(model, request, shape, caches, on_plan, cached_step, image)
    if request.compare:
        computed, skipped = caches.calls()

        def baseline_step(progress: Progress) -> None:
            if on_step is not None:
                on_step(Progress(steps + progress.step, total, computed, skipped, baseline=True))

        if source is None:
            uncached = expert_caches(model, shape, lambda *_: NoCache())
            baseline = run(model, request, shape, uncached, None, baseline_step, image)
        else:
            source_caches = expert_caches(
                model,
                source_shape,
                lambda transformer, expert: build_cache(
                    source.cache, transformer, source_shape, profiles, expert, source.loras
                ),
            )
            baseline = run(model, source, source_shape, source_caches, None, baseline_step, image)
        result.fidelity = Fidelity(
            psnr=psnr(result.frames, baseline.frames),
            ssim=ssim(result.frames, baseline.frames),
            baseline_denoise_seconds=baseline.timings.denoising,
            measured_speedup=baseline.timings.denoising / result.timings.denoising,
            baseline="uncached" if source is None else "source",
        )
    return result


def expert_caches(
    model: LoadedModel, shape: Shape, make: Callable[[torch.nn.Module, str], TimestepCache]
) -> ExpertCaches:
    """One cache per transformer of the model, made by ``make(transformer, expert)``, over the steps it runs."""
    timesteps = model.family.timesteps(model.pipeline, shape, model.device)
    scheduler = model.pipeline.scheduler.config
    ranges = expert_ranges(
        model.experts, timesteps, model.pipeline.config.get("boundary_ratio"), scheduler.num_train_timesteps
    )
    return ExpertCaches(
        [ExpertCache(name, transformer, steps, make(transformer, name)) for name, transformer, steps in ranges]
    )


def run(
    model: LoadedModel,
    request: GenerationRequest,
    shape: Shape,
    cache: TimestepCache | ExpertCaches,
    on_plan: PlanCallback | None = None,
    on_step: ProgressCallback | None = None,
    image: Image.Image | None = None,
) -> GenerationResult:
    """One pipeline run with a ready cache (one TimestepCache where the model has one transformer, else one per
    expert); ``request.cache`` and ``request.compare`` are not read."""
    if isinstance(cache, TimestepCache):
        if len(model.experts) > 1:
            raise ValueError(f"model {model.name} has {len(model.experts)} transformers: give one cache per expert")
        single = cache
        cache = expert_caches(model, shape, lambda *_: single)
    if image is None and model.image_input == "required":
        raise InvalidRequest("image", f"model {model.name} generates from an image: give the first frame")
    if image is not None and model.image_input is None:
        raise InvalidRequest("image", f"model {model.name} generates from text alone: it takes no image")
    pipe, family, device = model.pipeline_for(image is not None), model.family, model.device
    if request.loras and model.adapters is None:
        raise InvalidRequest("loras", f"model {model.name} runs no LoRA adapters here: they run on the service")
    loras = model.adapters.apply(request.loras) if model.adapters is not None else []
    do_cfg = request.guidance_scale > 1.0
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    started = time.perf_counter()
    prompts, prompt_cached = model.encode_prompts(request.prompt, request.negative_prompt, do_cfg)
    synchronize()
    encoded, encoded_cpu = time.perf_counter(), time.process_time()

    branches = tuple(family.branches(do_cfg))
    parallel = model.parallel
    cache.prepare(
        branches, family.timesteps(pipe, shape, device), family, parallel.sequence_group if parallel else None
    )
    if on_plan is not None:
        on_plan(cache.planned())

    denoised_at: list[float] = []
    denoised_cpu: list[float] = []

    def step_end(_pipe: object, index: int, _timestep: object, _tensors: dict) -> dict:
        if index == shape.num_inference_steps - 1:
            synchronize()
            denoised_at.append(time.perf_counter())
            denoised_cpu.append(time.process_time())
        if on_step is not None:
            computed, skipped = cache.calls()
            on_step(Progress(index + 1, shape.num_inference_steps, computed, skipped))
        return {}

    with cache.attached(parallel.cfg(branches) if parallel else None):
        output = pipe(
            **prompts,
            width=shape.width,
            height=shape.height,
            num_frames=shape.num_frames,
            num_inference_steps=shape.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="np",
            callback_on_step_end=step_end,
            **family.call_kwargs(request.fps),
            **({"image": image} if image is not None else {}),
        )
    synchronize()
    finished = time.perf_counter()

    timings = Timings(
        text_encoding=encoded - started,
        denoising=denoised_at[0] - encoded,
        vae_decode=finished - denoised_at[0],
        denoising_cpu=denoised_cpu[0] - encoded_cpu,
    )
    return GenerationResult(
        frames=np.asarray(output.frames[0], dtype=np.float32),
        shape=shape,
        fps=request.fps,
        timings=timings,
        cache=cache.report(timings.denoising),
        prompt_cached=prompt_cached,
        loras=loras,
    )
