"""TaylorSeer: compute on a fixed cadence; forecast the blocks' residual in between.

Reference: diffusers' ``TaylorSeerCacheConfig`` (paper: arXiv 2503.06923). A step computes when
``step < warmup_steps``, or ``(step - warmup_steps - 1) % interval == 0``, or
``step >= stop_step``; any other step adds the Taylor forecast (order ``order``) of the block
stack's residual, from its finite differences over the branch's computed steps
(``core.caching.forecast``). diffusers forecasts each attention module's output and still runs
the rest of each block; here the whole stack's residual is forecast, as cache-dit's TaylorSeer
calibrator does for DBCache. The schedule depends on the step count alone: it is known ahead.
The same forecast serves other strategies as their ``predictor``.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.caching.base import TimestepCache
from core.contract.strategies import TaylorSeerParams


class TaylorSeer(TimestepCache):
    name = "taylorseer"
    params: TaylorSeerParams

    @property
    def predictor_order(self) -> int:
        return self.params.order

    def forced(self, step: int, branch: int) -> bool:
        warmup, stop = self.params.warmup_steps, self.params.stop_step
        return step < warmup or (step - warmup - 1) % self.params.interval == 0 or (stop is not None and step >= stop)

    def signals(self) -> dict[str, Sequence[float]]:
        return {branch: [0.0] * self.plan.num_steps for branch in self.plan.branches}

    def can_reuse(self, accumulator: None, signal: float) -> bool:
        return True
