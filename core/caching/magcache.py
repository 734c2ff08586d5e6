"""MagCache: skip while the accumulated error of calibrated residual-magnitude ratios is small.

Reference: github.com/Zehong-Ma/MagCache (MagCache4Wan2.1). Per branch, for calls past the
retention window: ``G *= ratio[t]; k += 1; E += |1 - G|``; reuse while ``E < threshold`` and
``k <= K``. The decisions read only the ratio table, so the schedule is computed ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.caching.base import TimestepCache
from core.contract.strategies import MagCacheParams
from core.errors import CacheConfigError


@dataclass
class _Accumulator:
    ratio: float = 1.0
    error: float = 0.0
    steps: int = 0


def nearest_interp(values: Sequence[float], length: int) -> list[float]:
    """The reference's nearest-index resampling of a per-step table to ``length`` steps."""
    if length == 1:
        return [values[-1]]
    scale = (len(values) - 1) / (length - 1)
    # round() is round-half-to-even, like the reference's np.round.
    return [values[round(i * scale)] for i in range(length)]


class MagCache(TimestepCache):
    name = "magcache"
    params: MagCacheParams

    def new_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def forced(self, step: int, branch: int) -> bool:
        # The reference counts calls across branches (cond, uncond, cond, ...), not steps.
        calls_per_step = len(self.plan.branches)
        retained_calls = int(calls_per_step * self.plan.num_steps * self.params.retention_ratio)
        return calls_per_step * step + branch < retained_calls

    def signals(self) -> dict[str, Sequence[float]]:
        tables = self.profile.magcache
        missing = [branch for branch in self.plan.branches if branch not in tables]
        if missing:
            raise CacheConfigError(
                f"cache.profile: profile {self.profile.name!r} has no MagCache ratios for branch {missing[0]!r}"
            )
        return {branch: nearest_interp(tables[branch], self.plan.num_steps) for branch in self.plan.branches}

    def can_reuse(self, accumulator: _Accumulator, ratio: float) -> bool:
        accumulator.ratio *= ratio
        accumulator.steps += 1
        accumulator.error += abs(1 - accumulator.ratio)
        return accumulator.error < self.params.threshold and accumulator.steps <= self.params.max_skip_steps
