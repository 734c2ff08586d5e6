"""MagCache: skip while the accumulated error of calibrated residual-magnitude ratios is small.

Reference: github.com/Zehong-Ma/MagCache (MagCache4Wan2.1). Per branch, for calls past the
retention window: ``G *= ratio[t]; k += 1; E += |1 - G|``; reuse while ``E < threshold`` and
``k <= K``. The decisions read only the ratio table, so the schedule is computed ahead; the rule
itself is torch-free (``core.contract.schedules``), so the API predicts the same schedule at submit.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.caching.base import TimestepCache
from core.contract.schedules import (
    RatioAccumulator,
    magcache_forced,
    magcache_reuse,
    nearest_interp,
)
from core.contract.strategies import MagCacheParams
from core.errors import CacheConfigError


class MagCache(TimestepCache):
    name = "magcache"
    params: MagCacheParams

    def new_accumulator(self) -> RatioAccumulator:
        return RatioAccumulator()

    def forced(self, step: int, branch: int) -> bool:
        return magcache_forced(self.params, self.plan.num_steps, len(self.plan.branches), step, branch)

    def signals(self) -> dict[str, Sequence[float]]:
        tables = self.profile.magcache
        missing = [branch for branch in self.plan.branches if branch not in tables]
        if missing:
            raise CacheConfigError(
                f"cache.profile: profile {self.profile.name!r} has no MagCache ratios for branch {missing[0]!r}"
            )
        return {branch: nearest_interp(tables[branch], self.plan.num_steps) for branch in self.plan.branches}

    def can_reuse(self, accumulator: RatioAccumulator, ratio: float) -> bool:
        return magcache_reuse(self.params, accumulator, ratio)
