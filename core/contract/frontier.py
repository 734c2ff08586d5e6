"""Choosing by quality: the measured speed/fidelity frontier of a model at one shape, and the targets a job may
name instead of a setting (``cache: {"strategy": "auto", "target": {...}}``).

Pure Python on the frontier's numbers: the API picks a job's setting at submit without the engine. Fidelity is
PSNR and SSIM of the decoded 8-bit frames (what the MP4 gets) against the uncached run of the same seed; a point's
predicted fidelity is its worst case over the prompts it was measured on and the receipts it has had since, so a
target met on the frontier is met by every prompt seen so far.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The PSNR recorded for identical frames (infinite): 8-bit frames that differ by one level in one pixel of a
# 64x64 frame already score about 84 dB.
IDENTICAL_PSNR = 100.0
# How far (log of the token count) a frontier measured at another size may stand in for the job's: a factor 4.
MAX_SIZE_DISTANCE = math.log(4)


class Minimum(BaseModel):
    psnr: float | None = None
    ssim: float | None = None


# Strategies that make transformer calls cheaper rather than skipping them.
CHEAPER_CALLS = frozenset({"chipmunk"})
# Named tiers. `lossless` is bit-exact (no cache). The others are minimums of worst-case PSNR and SSIM:
# bench/frontier.py derives them from a measured frontier by one rule (bench/results/frontier-cpu.md states it and
# the data) and checks `auto` on held-out prompts. These are still the usual reading of video PSNR (35 dB:
# differences invisible at 8 bits; 28 dB: visible but small; 22 dB: plainly visible): on wan-tiny-trained's frontier
# (12 calibration prompts) a setting's PSNR varies by up to 15 dB between prompts, too much for the rule to place
# three tiers. With them, `auto` met the target on held-out prompts in each tier.
TIERS: dict[str, Minimum | None] = {
    "lossless": None,
    "high": Minimum(psnr=35.0, ssim=0.97),
    "balanced": Minimum(psnr=28.0, ssim=0.90),
    "fast": Minimum(psnr=22.0, ssim=0.75),
}
TierName = Literal["lossless", "high", "balanced", "fast"]


class Target(BaseModel):
    """What a job asks of its cache instead of naming a setting: a named tier, minimum fidelity, or a deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: TierName | None = Field(
        default=None,
        description="lossless (bit-exact: no cache), "
        + ", ".join(f"{name} (PSNR >= {m.psnr:g} dB, SSIM >= {m.ssim:g})" for name, m in TIERS.items() if m)
        + ".",
        examples=["high"],
    )
    min_psnr: float | None = Field(
        default=None, ge=0, le=IDENTICAL_PSNR, description="Least PSNR, dB, against the uncached run.", examples=[30]
    )
    min_ssim: float | None = Field(
        default=None, ge=0, le=1, description="Least SSIM against the uncached run.", examples=[0.95]
    )
    deadline_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Denoising time to stay within: the most faithful setting predicted to finish in time (the "
        "fastest if none is).",
        examples=[30.0],
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Target:
        kinds = [self.tier is not None, self.min_psnr is not None or self.min_ssim is not None]
        kinds.append(self.deadline_seconds is not None)
        if sum(kinds) != 1:
            raise ValueError("give one of: tier, min_psnr and/or min_ssim, deadline_seconds")
        return self

    def minimum(self) -> Minimum | None:
        """The least fidelity asked for; None for lossless or a deadline."""
        if self.tier is not None:
            return TIERS[self.tier]
        if self.deadline_seconds is not None:
            return None
        return Minimum(psnr=self.min_psnr, ssim=self.min_ssim)


def setting_key(strategy: str, params: dict[str, Any]) -> str:
    """One string per setting: the strategy and its parameters as given, in canonical JSON."""
    return f"{strategy} {json.dumps(params, sort_keys=True, separators=(',', ':'))}"


class FrontierPoint(BaseModel):
    id: str | None = Field(
        default=None,
        description="The point's id (what a receipt updates).",
        examples=["3f2c6a4e-2f7b-4c8e-9d61-5b0f3f0c1a2b"],
    )
    strategy: str = Field(description="The cache strategy.", examples=["magcache"])
    params: dict[str, Any] = Field(description="Its parameters as run.", examples=[{"threshold": 0.12}])
    computed_calls: float = Field(description="Transformer calls computed per run (mean).", examples=[24.0])
    total_calls: int = Field(description="Transformer calls of an uncached run.", examples=[40])
    speedup: float = Field(description="Uncached denoising time over this setting's (measured).", examples=[1.6])
    denoise_seconds: float = Field(description="Mean denoising time of one run.", examples=[4.2])
    baseline_denoise_seconds: float = Field(description="Mean uncached denoising time.", examples=[6.7])
    psnr: float = Field(description="Predicted PSNR, dB: the worst over prompts and receipts.", examples=[31.2])
    psnr_mean: float = Field(description="Mean PSNR over prompts and receipts.", examples=[33.0])
    ssim: float = Field(description="Predicted SSIM: the worst over prompts and receipts.", examples=[0.95])
    ssim_mean: float = Field(description="Mean SSIM over prompts and receipts.", examples=[0.96])
    samples: int = Field(description="Runs the fidelity figures cover: prompts measured, then receipts.", examples=[4])
    receipts: int = Field(default=0, description="Of those, sampled jobs' receipts.", examples=[0])
    pareto: bool = Field(
        default=False, description="On the Pareto front (no setting is both faster and better).", examples=[True]
    )

    @property
    def setting(self) -> str:
        return setting_key(self.strategy, self.params)

    def faster(self) -> bool:
        """Faster than no cache. A setting that computed every call of a strategy that saves by skipping calls is
        not, whatever its measured speedup says (that is timing noise)."""
        skips = self.computed_calls < self.total_calls or self.strategy in CHEAPER_CALLS
        return skips and self.speedup > 1.0

    def meets(self, minimum: Minimum) -> bool:
        return (minimum.psnr is None or self.psnr >= minimum.psnr) and (
            minimum.ssim is None or self.ssim >= minimum.ssim
        )


class Frontier(BaseModel):
    model: str = Field(
        description="The model it was measured on (preset, hub id or directory name).", examples=["wan-tiny-trained"]
    )
    width: int = Field(description="Pixels.", examples=[128])
    height: int = Field(description="Pixels.", examples=[128])
    num_frames: int = Field(description="Frames.", examples=[17])
    num_inference_steps: int = Field(description="Denoising steps.", examples=[20])
    guidance_scale: float = Field(description="Guidance scale of the runs.", examples=[5.0])
    adapters: str = Field(
        default="",
        description="The LoRA adapters the model ran with, `name:weight,...` in name order; empty: the base model. "
        "A job with adapters is chosen for from the frontier measured with them, else from the base model's.",
        examples=[""],
    )
    measured_at: datetime = Field(description="When it was measured.", examples=["2026-12-05T21:30:00Z"])
    points: list[FrontierPoint] = Field(
        description="One per setting.",
        examples=[
            [
                {
                    "id": "3f2c6a4e-2f7b-4c8e-9d61-5b0f3f0c1a2b",
                    "strategy": "magcache",
                    "params": {"threshold": 0.12},
                    "computed_calls": 24.0,
                    "total_calls": 40,
                    "speedup": 1.6,
                    "denoise_seconds": 4.2,
                    "baseline_denoise_seconds": 6.7,
                    "psnr": 31.2,
                    "psnr_mean": 33.0,
                    "ssim": 0.95,
                    "ssim_mean": 0.96,
                    "samples": 4,
                    "receipts": 0,
                    "pareto": True,
                }
            ]
        ],
    )

    def distance(self, width: int, height: int, num_frames: int) -> float:
        return abs(math.log((width * height * num_frames) / (self.width * self.height * self.num_frames)))


def mark_pareto(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The points with ``pareto`` set: no other point is at least as fast and as faithful, and better in one."""

    def dominated(p: FrontierPoint) -> bool:
        return any(
            q.speedup >= p.speedup and q.psnr >= p.psnr and (q.speedup > p.speedup or q.psnr > p.psnr) for q in points
        )

    return [p.model_copy(update={"pareto": not dominated(p)}) for p in points]


class Choice(BaseModel):
    """What ``auto`` chose for a job, or why it fell back to no cache."""

    target: Target = Field(description="The job's target.", examples=[{"min_psnr": 30}])
    strategy: str = Field(description="The setting chosen: its strategy (`none` on a fallback).", examples=["magcache"])
    params: dict[str, Any] = Field(description="Its parameters.", examples=[{"threshold": 0.12}])
    point: str | None = Field(
        description="The frontier point it came from; null on a fallback.",
        examples=["3f2c6a4e-2f7b-4c8e-9d61-5b0f3f0c1a2b"],
    )
    frontier_shape: str | None = Field(
        description="The shape the frontier was measured at, WIDTHxHEIGHTxFRAMES-STEPS; null on a fallback.",
        examples=["64x64x9-6"],
    )
    predicted_speedup: float = Field(description="The frontier's measured speedup (1 on a fallback).", examples=[1.6])
    predicted_psnr: float | None = Field(description="Predicted PSNR, dB; null when bit-exact.", examples=[31.2])
    predicted_ssim: float | None = Field(description="Predicted SSIM; null when bit-exact.", examples=[0.95])
    predicted_denoise_seconds: float | None = Field(
        default=None, description="Deadlines: the denoising time predicted for the setting.", examples=[3.1]
    )
    reason: str = Field(description="Why this setting.", examples=["fastest setting with PSNR >= 30 dB"])


def choose(
    frontier: Frontier | None, target: Target, uncached_seconds: float | None = None, why_none: str = ""
) -> Choice:
    """The fastest point of ``frontier`` that meets ``target`` (for a deadline: the most faithful predicted to end in
    time, ``uncached_seconds`` being the job's predicted uncached denoising time); else no cache, with the reason."""

    def fallback(reason: str) -> Choice:
        return Choice(
            target=target,
            strategy="none",
            params={},
            point=None,
            frontier_shape=None,
            predicted_speedup=1.0,
            predicted_psnr=None,
            predicted_ssim=None,
            predicted_denoise_seconds=uncached_seconds,
            reason=reason,
        )

    if target.tier == "lossless":
        return fallback("lossless: bit-exact output needs every step computed (no cache)")
    if frontier is None:
        return fallback(f"no frontier covers this job ({why_none}): running without a cache")
    shape = f"{frontier.width}x{frontier.height}x{frontier.num_frames}-{frontier.num_inference_steps}"
    points = [p for p in frontier.points if p.faster()]
    seconds: float | None = None
    minimum = target.minimum()
    if minimum is not None:
        meeting = [p for p in points if p.meets(minimum)]
        if not meeting:
            return fallback(f"no setting on the frontier ({shape}) meets the target: running without a cache")
        best = max(meeting, key=lambda p: p.speedup)
        wants = " and ".join(
            f"{name} >= {value:g}{unit}"
            for name, value, unit in (("PSNR", minimum.psnr, " dB"), ("SSIM", minimum.ssim, ""))
            if value is not None
        )
        reason = f"the fastest setting on the frontier ({shape}) with {wants}"
    else:
        deadline = target.deadline_seconds or 0.0
        if uncached_seconds is None:
            return fallback("no denoising time is known for this model and shape: running without a cache")
        if uncached_seconds <= deadline:
            return fallback(f"uncached denoising ({uncached_seconds:.2f} s predicted) meets the deadline")
        in_time = [p for p in points if uncached_seconds / p.speedup <= deadline]
        if in_time:
            best = max(in_time, key=lambda p: (p.psnr, p.speedup))
            reason = f"the most faithful setting on the frontier ({shape}) predicted within {deadline:g} s"
        elif points:
            best = max(points, key=lambda p: p.speedup)
            reason = f"no setting is predicted within {deadline:g} s: the fastest on the frontier ({shape})"
        else:
            return fallback(f"no setting on the frontier ({shape}) is faster than no cache")
        seconds = round(uncached_seconds / best.speedup, 3)
    return Choice(
        target=target,
        strategy=best.strategy,
        params=best.params,
        point=best.id,
        frontier_shape=shape,
        predicted_speedup=round(best.speedup, 4),
        predicted_psnr=round(best.psnr, 3),
        predicted_ssim=round(best.ssim, 4),
        predicted_denoise_seconds=seconds,
        reason=reason,
    )
