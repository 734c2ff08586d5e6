"""Schedules known before denoising, in pure Python: the decision rules of the strategies whose signals
come from a calibration profile (MagCache's ratios, TeaCache's rescaled embedding changes, TaoCache's
cosines and norm ratios of consecutive output deltas).

The engine's strategies (``core.caching``) decide with these same functions while a job runs; the API
uses them to tell, at submit, what a job will compute and skip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.contract.strategies import MagCacheParams, TaoCacheParams, TeaCacheParams

# TeaCache with use_ret_steps computes its first steps whatever the signal says.
TEACACHE_RETENTION_STEPS = 5
# TaoCache: steps 0 and 1 give no delta pair to predict from.
TAOCACHE_FIRST_PREDICTABLE = 2


def replay(
    num_steps: int,
    signals: Sequence[float],
    forced: Callable[[int], bool],
    new_accumulator: Callable[[], Any],
    can_reuse: Callable[[Any, float], bool],
) -> list[bool]:
    """The compute (True) / reuse (False) decisions of one branch for its per-step signals: step 0 and
    the forced steps compute; otherwise the rule decides, and every compute resets its accumulator."""
    accumulator = new_accumulator()
    decisions = []
    for step in range(num_steps):
        compute = step == 0 or forced(step) or not can_reuse(accumulator, signals[step])
        if compute:
            accumulator = new_accumulator()
        decisions.append(compute)
    return decisions


def nearest_interp(values: Sequence[float], length: int) -> list[float]:
    """MagCache's nearest-index resampling of a per-step table to ``length`` steps."""
    if length == 1:
        return [values[-1]]
    scale = (len(values) - 1) / (length - 1)
    # round() is round-half-to-even, like the reference's np.round.
    return [values[round(i * scale)] for i in range(length)]


@dataclass
class RatioAccumulator:
    """MagCache's and TaoCache's state between computes: the product of the calibrated ratios since the last
    computed step, the error accumulated from them, and how many steps were skipped."""

    ratio: float = 1.0
    error: float = 0.0
    steps: int = 0


def magcache_forced(params: MagCacheParams, num_steps: int, branches: int, step: int, branch: int) -> bool:
    # The reference counts calls across branches (cond, uncond, cond, ...), not steps.
    retained_calls = int(branches * num_steps * params.retention_ratio)
    return branches * step + branch < retained_calls


def magcache_reuse(params: MagCacheParams, accumulator: RatioAccumulator, ratio: float) -> bool:
    """``G *= ratio; k += 1; E += |1 - G|``; reuse while ``E < threshold`` and ``k <= K``."""
    accumulator.ratio *= ratio
    accumulator.steps += 1
    accumulator.error += abs(1 - accumulator.ratio)
    return accumulator.error < params.threshold and accumulator.steps <= params.max_skip_steps


def magcache_schedule(
    params: MagCacheParams, ratios: dict[str, Sequence[float]], branches: Sequence[str], num_steps: int
) -> dict[str, list[bool]]:
    """Per branch, MagCache's decisions from a profile's ratio tables (KeyError: a branch has none)."""
    return {
        branch: replay(
            num_steps,
            nearest_interp(ratios[branch], num_steps),
            lambda step, index=index: magcache_forced(params, num_steps, len(branches), step, index),
            RatioAccumulator,
            lambda accumulator, ratio: magcache_reuse(params, accumulator, ratio),
        )
        for index, branch in enumerate(branches)
    }


def teacache_forced(params: TeaCacheParams, num_steps: int, step: int) -> bool:
    if params.use_ret_steps:
        return step < TEACACHE_RETENTION_STEPS
    return step == 0 or step == num_steps - 1


def polyval(coefficients: Sequence[float], x: float) -> float:
    """np.poly1d(coefficients)(x): highest power first."""
    value = 0.0
    for coefficient in coefficients:
        value = value * x + coefficient
    return value


def teacache_schedule(
    params: TeaCacheParams, coefficients: Sequence[float], changes: Sequence[float], branches: Sequence[str]
) -> dict[str, list[bool]]:
    """TeaCache's decisions from the relative L1 change of the compared embedding at each step after the
    first (it depends on the timesteps alone, so every branch gets the same schedule)."""
    num_steps = len(changes) + 1
    signals = [0.0, *(polyval(coefficients, change) for change in changes)]

    def reuse(accumulator: list[float], signal: float) -> bool:
        accumulator[0] += signal
        return accumulator[0] < params.threshold

    decisions = replay(num_steps, signals, lambda step: teacache_forced(params, num_steps, step), lambda: [0.0], reuse)
    return {branch: list(decisions) for branch in branches}


def taocache_start(params: TaoCacheParams, num_steps: int) -> int:
    """The first step TaoCache decides; the steps before it compute or follow the early rule."""
    return max(TAOCACHE_FIRST_PREDICTABLE, int(num_steps * params.start_ratio))


def taocache_signals(
    cosines: Sequence[float], norm_ratios: Sequence[float], num_steps: int
) -> list[tuple[float, float]]:
    """A profile's per-step (cosine, norm ratio) table resampled to the job's steps, as MagCache's ratios are."""
    return list(zip(nearest_interp(cosines, num_steps), nearest_interp(norm_ratios, num_steps), strict=True))


def taocache_predict(params: TaoCacheParams, accumulator: RatioAccumulator, signal: tuple[float, float]) -> bool:
    """``G *= r; k += 1; E += G * sqrt(1 - c^2)``; predict while ``E < threshold`` and ``k <= K``."""
    cosine, ratio = signal
    accumulator.ratio *= ratio
    accumulator.steps += 1
    accumulator.error += accumulator.ratio * math.sqrt(max(0.0, 1.0 - min(cosine, 1.0) ** 2))
    return accumulator.error < params.threshold and accumulator.steps <= params.max_skip_steps


def taocache_branch(
    params: TaoCacheParams, signals: Sequence[tuple[float, float]], early: Sequence[bool] | None, early_code: str
) -> tuple[list[bool], str]:
    """One branch's decisions and the rule behind each (``C`` computed, ``p`` predicted by TaoCache,
    ``early_code`` reused by the early rule): before the start step the early rule's decisions (all
    computed without one), from it on TaoCache's."""
    start = taocache_start(params, len(signals))
    accumulator = RatioAccumulator()
    decisions, rules = [], []
    for step, signal in enumerate(signals):
        if step < start:
            compute, rule = early is None or early[step], early_code
        else:
            compute, rule = not taocache_predict(params, accumulator, signal), "p"
        if compute:
            accumulator = RatioAccumulator()
        decisions.append(compute)
        rules.append("C" if compute else rule)
    return decisions, "".join(rules)
