"""DBCache: compute the first Fn and last Bn blocks; reuse the middle blocks' residual.

Reference: cache-dit's DBCache (``cache_dit/caching/cache_contexts``: ``CachedContextManager.can_cache``,
``CachedContext.add_cached_step``, ``warmup_steps``). Per branch and step, the Fn blocks run and
their residual (output minus the stack's input) is what is compared; the middle blocks reuse
their cached residual unless, in cache-dit's order:

1. the step is a warm-up step (``range(0, min(max_warmup_steps, leading 1s of the mask),
   warmup_interval)``);
2. the step's mask entry is 1 (with the ``static`` policy a 0 entry reuses right here);
3. the branch has reused ``max_cached_steps`` steps (-1: no cap);
4. its consecutive-reuse counter has reached ``max_continuous_cached_steps`` (the counter is then
   reset to 0; it is cache-dit's: +1 for a first reuse, +2 for a second consecutive one counted
   from 0, +1 for each further one, unchanged by a reuse after a gap);
5. ``diff = mean|r - r_prev| / mean|r_prev|`` (``r_prev``: the Fn residual of the branch's last
   computed step) is not below ``residual_diff_threshold`` (a threshold of 0 never reuses, 1 or
   more always does).

The Bn blocks then run on the (computed or reused) middle output. No calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.caching.base import BranchState, RunPlan, TimestepCache, relative_change
from core.contract.strategies import DBCacheParams
from core.errors import CacheConfigError


@dataclass
class _Reuses:
    steps: list[int] = field(default_factory=list)
    continuous: int = 0


class DBCache(TimestepCache):
    name = "dbcache"
    params: DBCacheParams

    def unit_blocks(self, num_blocks: int) -> tuple[int, int]:
        rule = self.params.block_rule(num_blocks)
        if rule is not None:
            raise CacheConfigError(f"cache.params: {rule}")
        return self.params.Fn_compute_blocks, num_blocks - self.params.Bn_compute_blocks

    def prepare(self, plan: RunPlan) -> None:
        self.unit_blocks(len(plan.family.blocks(plan.transformer)))
        super().prepare(plan)
        self.fn_residuals: dict[str, torch.Tensor] = {}
        self.reuse_counts = {branch: _Reuses() for branch in plan.branches}
        mask = self.params.steps_computation_mask or []
        leading = next((i for i, m in enumerate(mask) if m == 0), len(mask))
        warmup = min(self.params.max_warmup_steps, leading) if mask else self.params.max_warmup_steps
        self.warmup = set(range(0, warmup, self.params.warmup_interval))

    def should_compute(self, state: BranchState, unit_input: torch.Tensor) -> bool:
        compute = self._must_compute(state, unit_input)
        if not compute:
            self._count_reuse(self.reuse_counts[state.name], state.step)
        return compute

    def _must_compute(self, state: BranchState, unit_input: torch.Tensor) -> bool:
        params, step, reuses = self.params, state.step, self.reuse_counts[state.name]
        if state.residual is None or step in self.warmup:
            return True
        mask = params.steps_computation_mask
        if mask is not None and step < len(mask):
            if mask[step] == 1:
                return True
            if params.steps_computation_policy == "static":
                return False
        if 0 <= params.max_cached_steps <= len(reuses.steps):
            return True
        if 0 <= params.max_continuous_cached_steps <= reuses.continuous:
            reuses.continuous = 0
            return True
        threshold = params.residual_diff_threshold
        if threshold <= 0:
            return True
        if threshold >= 1:
            return False
        change = relative_change(unit_input - state.call_input, self.fn_residuals[state.name], self.plan.sequence_group)
        return change >= threshold

    @staticmethod
    def _count_reuse(reuses: _Reuses, step: int) -> None:
        if not reuses.steps:
            reuses.continuous += 1
        elif step - reuses.steps[-1] == 1:
            reuses.continuous += 2 if reuses.continuous == 0 else 1
        reuses.steps.append(step)

    def after_compute(self, state: BranchState, unit_input: torch.Tensor, unit_output: torch.Tensor) -> None:
        self.fn_residuals[state.name] = unit_input - state.call_input
