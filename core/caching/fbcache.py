"""FBCache: compute the first block; reuse the other blocks' residual while its residual barely changes.

Reference: diffusers' FirstBlockCache (``diffusers.hooks.first_block_cache``, after ParaAttention).
Per branch, the first block always runs; its residual is compared with the one of the branch's
last computed call: ``diff = mean|r - r_prev| / mean|r_prev|``. The remaining blocks run when
``diff > threshold`` (then ``r_prev = r``), else their cached residual is added to the first
block's output. No calibration, no warm-up: only the first call of a branch always computes.

diffusers' hooks sit inside every block, so a compiled block traces their decision
(``torch.compiler.disable``, ``.item()``) and breaks its graph, and they report no computed
calls; the rule is therefore applied here, in the engine's slots, with the same semantics.
"""

from __future__ import annotations

import torch

from core.caching.base import BranchState, RunPlan, TimestepCache, relative_change
from core.contract.strategies import FBCacheParams


class FBCache(TimestepCache):
    name = "fbcache"
    params: FBCacheParams

    def unit_blocks(self, num_blocks: int) -> tuple[int, int]:
        return 1, num_blocks

    def prepare(self, plan: RunPlan) -> None:
        super().prepare(plan)
        self.first_residuals: dict[str, torch.Tensor] = {}

    def runtime_signal(self, state: BranchState, unit_input: torch.Tensor) -> float | None:
        previous = self.first_residuals.get(state.name)
        if previous is None:
            return None
        return relative_change(unit_input - state.call_input, previous, self.plan.sequence_group)

    def can_reuse(self, accumulator: None, diff: float) -> bool:
        return diff <= self.params.threshold

    def after_compute(self, state: BranchState, unit_input: torch.Tensor, unit_output: torch.Tensor) -> None:
        self.first_residuals[state.name] = unit_input - state.call_input
