"""Measuring a frontier: prompts run uncached and under a grid of cache settings at one shape, each setting's
computed calls, measured speedup and fidelity against the uncached run of the same seed recorded.

Fidelity is PSNR and SSIM of the decoded 8-bit frames (core.fidelity.delivered_fidelity). LPIPS is not measured:
its network weights are not available offline here.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from core.caching.none import NoCache
from core.caching.profiles import ProfileStore
from core.caching.registry import build_cache
from core.contract.frontier import FrontierPoint, setting_key
from core.contract.loras import LoraSpec
from core.contract.request import GenerationRequest
from core.contract.shapes import Shape
from core.contract.strategies import CacheSpec
from core.fidelity import delivered_fidelity
from core.generation import GenerationResult, run
from core.models import LoadedModel
from core.video import to_uint8

# Three settings or more per strategy, from gentle to aggressive; warm-ups in steps are given as ratios or kept
# small so that they leave something to skip at the small step counts of tiny models.
DEFAULT_GRID: tuple[tuple[str, dict[str, Any]], ...] = (
    *(("teacache", {"threshold": t}) for t in (0.08, 0.2, 0.4)),
    *(("magcache", {"threshold": t, "max_skip_steps": k}) for t, k in ((0.06, 2), (0.12, 2), (0.24, 3))),
    *(("easycache", {"threshold": t, "warmup_ratio": 0.2}) for t in (0.05, 0.1, 0.2)),
    *(("fbcache", {"threshold": t}) for t in (0.05, 0.1, 0.2)),
    *(
        ("dbcache", {"Fn_compute_blocks": 1, "max_warmup_steps": 2, "residual_diff_threshold": t})
        for t in (0.08, 0.16, 0.32)
    ),
    *(("taylorseer", {"warmup_steps": 2, "interval": n}) for n in (2, 3, 5)),
    *(("taocache", {"threshold": t}) for t in (0.25, 0.5, 1.0)),
    *(("chipmunk", {"attn_top_keys": k}) for k in (0.3, 0.1, 0.05)),
)


@dataclass
class _Tally:
    computed: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)


def measure(
    model: LoadedModel,
    shape: Shape,
    prompts: Sequence[str],
    grid: Sequence[tuple[str, dict[str, Any]]],
    profiles: ProfileStore,
    guidance_scale: float = 5.0,
    seed: int = 0,
    on_run: Callable[[str, str, GenerationResult], None] | None = None,
    clock: Literal["wall", "cpu"] = "wall",
    loras: Sequence[LoraSpec] = (),
    image: Image.Image | None = None,
) -> list[FrontierPoint]:
    """One point per setting of ``grid``; prompt ``i`` runs with seed ``seed + i``, uncached first; every run with
    the LoRA adapters ``loras``, and an image-to-video model's from the first frame ``image``. Denoising time is wall
    time, or with ``clock="cpu"`` the process's CPU time (for one torch thread on a shared CPU)."""

    def seconds(result: GenerationResult) -> float:
        return result.timings.denoising_cpu if clock == "cpu" else result.timings.denoising

    specs = [CacheSpec(strategy=strategy, params=params) for strategy, params in grid]
    for spec in specs:
        # A setting that cannot run is refused before any work.
        build_cache(spec, model.transformer, shape, profiles, loras=loras)
    tallies = [_Tally() for _ in specs]
    baseline_seconds: list[float] = []
    total_calls = 0
    for index, prompt in enumerate(prompts):
        request = GenerationRequest.at(
            shape, prompt, guidance_scale=guidance_scale, seed=seed + index, loras=list(loras)
        )
        uncached = run(model, request, shape, NoCache(), image=image)
        reference = to_uint8(uncached.frames)
        baseline_seconds.append(seconds(uncached))
        total_calls = sum(b.computed + b.skipped for b in uncached.cache.branches.values())
        if on_run is not None:
            on_run(prompt, "none", uncached)
        for spec, tally in zip(specs, tallies, strict=True):
            cache = build_cache(spec, model.transformer, shape, profiles, loras=loras)
            result = run(model, request, shape, cache, image=image)
            psnr, ssim = delivered_fidelity(to_uint8(result.frames), reference)
            tally.computed.append(sum(b.computed for b in result.cache.branches.values()))
            tally.seconds.append(seconds(result))
            tally.psnr.append(psnr)
            tally.ssim.append(ssim)
            if on_run is not None:
                on_run(prompt, setting_key(spec.strategy, spec.params), result)
    baseline = statistics.fmean(baseline_seconds)
    return [
        FrontierPoint(
            strategy=spec.strategy,
            params=spec.params,
            computed_calls=statistics.fmean(tally.computed),
            total_calls=total_calls,
            # Fastest over fastest: other load on the machine only ever slows a run down.
            speedup=round(min(baseline_seconds) / min(tally.seconds), 4),
            denoise_seconds=round(statistics.fmean(tally.seconds), 4),
            baseline_denoise_seconds=round(baseline, 4),
            psnr=round(min(tally.psnr), 3),
            psnr_mean=round(statistics.fmean(tally.psnr), 3),
            ssim=round(min(tally.ssim), 5),
            ssim_mean=round(statistics.fmean(tally.ssim), 5),
            samples=len(prompts),
        )
        for spec, tally in zip(specs, tallies, strict=True)
    ]
