"""TeaCache: skip while the accumulated, rescaled change of the timestep embedding is small.

Reference: github.com/ali-vilab/TeaCache (TeaCache4Wan2.1). Per branch:
``acc += poly(mean|m - m_prev| / mean|m_prev|)``; reuse while ``acc < threshold``. With
``use_ret_steps`` the compared tensor is the projected embedding (``timestep_proj``) and the
first 5 steps compute; without, it is ``temb`` and the first and last steps compute. The
compared tensor depends on the timestep alone, so the schedule is computed ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.caching.base import TimestepCache
from core.contract.schedules import teacache_forced
from core.contract.strategies import TeaCacheParams
from core.errors import CacheConfigError


@dataclass
class _Accumulator:
    distance: float = 0.0


def relative_l1(embeddings: torch.Tensor) -> list[float]:
    """Per step, ``mean|e_t - e_(t-1)| / mean|e_(t-1)|`` (0 for the first step): one host transfer."""
    flat = embeddings.float().flatten(1)
    change = (flat[1:] - flat[:-1]).abs().mean(dim=1) / flat[:-1].abs().mean(dim=1)
    return [0.0, *change.tolist()]


class TeaCache(TimestepCache):
    name = "teacache"
    params: TeaCacheParams

    @property
    def compared(self) -> str:
        return "timestep_proj" if self.params.use_ret_steps else "temb"

    def new_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def forced(self, step: int, branch: int) -> bool:
        return teacache_forced(self.params, self.plan.num_steps, step)

    def signals(self) -> dict[str, Sequence[float]]:
        coefficients = self.profile.teacache.get(self.compared)
        if coefficients is None:
            raise CacheConfigError(
                f"cache.profile: profile {self.profile.name!r} has no TeaCache coefficients for {self.compared}"
            )
        embeddings = self.plan.family.timestep_embeddings(self.plan.transformer, self.plan.timesteps)
        rescaled = np.poly1d(coefficients)(relative_l1(embeddings[self.compared])).tolist()
        return {branch: rescaled for branch in self.plan.branches}

    def can_reuse(self, accumulator: _Accumulator, rescaled_change: float) -> bool:
        accumulator.distance += rescaled_change
        return accumulator.distance < self.params.threshold
