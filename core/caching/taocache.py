"""TaoCache: predict the late steps' output from the calibrated geometry of consecutive output deltas.

Reference: Fan, Wang, Zhang, "TaoCache: Structure-Maintained Video Generation Acceleration",
arXiv 2508.08978. The copies of the paper this was written from (arxiv.org/html/2508.08978v1 and
its mirrors, as stored for this project's search) hold its abstract, the start of its introduction
and the caption of its Figure 1, not its method section: no equation number can be cited, and every
formula below is marked either as the abstract's own words or as skipstep's reading of them.

Per CFG branch, ``o_i`` is the cached unit's output at step i (the one used: computed, reused or
predicted) and ``d_i = o_i - o_(i-1)`` the "noise delta".

1. Calibration (abstract: "calibrating cosine similarities and norm ratios of consecutive noise
   deltas"): per step, ``c_i = cos(d_i, d_(i-1))`` and ``r_i = ||d_i|| / ||d_(i-1)||``, averaged over
   the calibration prompts (``core.calibration``); 1.0 for steps 0 and 1, which have no pair.
   Interpretation: norms and cosines are taken over the whole tensor of the branch's output.
2. Prediction (abstract: "adopts a fixed-point perspective to predict the model's noise output"):
   a predicted step uses ``d^_i = r_i c_i d_(i-1)`` and ``o^_i = o_(i-1) + d^_i``. Interpretation:
   ``r_i c_i = <d_i, d_(i-1)> / ||d_(i-1)||^2`` is the calibrated least-squares coefficient of the next
   delta on the last one, so a run of predictions iterates a map whose fixed point is
   ``o_s + d_s * sum_k prod_(j<=k) r_j c_j``: late in denoising, where ``r c < 1``, the output
   contracts towards it, which is the fixed-point view in the abstract's sense.
3. Decision (interpretation; the abstract says only that the method targets late steps and skips
   aggressively): along a run of predictions since the last computed step s,
   ``G_i = prod_(j=s+1..i) r_j`` is the expected size of ``d_i`` in units of ``||d_s||``, and
   ``e_i = G_i * sqrt(1 - c_i^2)`` the part of it that the projection of step 2 misses. ``E += e_i``;
   predict while ``E < threshold`` and at most ``max_skip_steps`` in a row.
4. Late steps only (abstract: "specifically effective in late denoising stages"; the share is
   skipstep's choice, ``start_ratio``): the first ``start_ratio`` of the steps, and always steps 0 and
   1 (no delta yet), are computed, or left to an early rule.

Where the output is taken (interpretation): at the block stack, like MagCache and TeaCache here,
not after the output head. The head always runs and applies the step's own timestep modulation to
the predicted tokens; and the composite below then reuses the same cached unit in both halves.

Orthogonality (the abstract calls TaoCache orthogonal to TeaCache and PAB): with ``early`` set to
``magcache`` or ``teacache``, that rule, with its published defaults and the same profile, decides
the steps before ``start_ratio`` (reusing the block-stack residual, as it does alone) and TaoCache
the steps after; each branch's figures carry ``rules``: per step ``C`` computed, ``m``/``t`` reused
by MagCache/TeaCache, ``p`` predicted by TaoCache.

Every decision reads calibrated tables only (interpolated to the job's step count by nearest index,
as MagCache's ratios are), so the whole schedule is computed before denoising; only the predicted
tensors are formed on-line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.caching.base import BranchState, RunPlan, TimestepCache
from core.caching.composed import STEP_RULES, step_rule_schedule
from core.contract.schedules import (
    RatioAccumulator,
    taocache_branch,
    taocache_predict,
    taocache_signals,
    taocache_start,
)
from core.contract.strategies import TaoCacheParams
from core.errors import CacheConfigError


@dataclass
class _History:
    output: torch.Tensor | None = None
    delta: torch.Tensor | None = None


class TaoCache(TimestepCache):
    name = "taocache"
    params: TaoCacheParams

    def prepare(self, plan: RunPlan) -> None:
        self.plan = plan
        self.start = taocache_start(self.params, plan.num_steps)
        self.history = {branch: _History() for branch in plan.branches}
        self.rules: dict[str, str] = {}
        self.early = self._early_schedule(plan)
        super().prepare(plan)

    def _early_schedule(self, plan: RunPlan) -> dict[str, list[bool]] | None:
        if self.params.early == "none":
            return None
        return step_rule_schedule(self.params.early, self.profile, plan, f"taocache with early={self.params.early}")

    def new_accumulator(self) -> RatioAccumulator:
        return RatioAccumulator()

    def signals(self) -> dict[str, Sequence[tuple[float, float]]]:
        tables = self.profile.taocache
        steps = self.plan.num_steps
        self.tables: dict[str, list[tuple[float, float]]] = {}
        for branch in self.plan.branches:
            if branch not in tables:
                raise CacheConfigError(
                    f"cache.profile: profile {self.profile.name!r} has no TaoCache table for branch {branch!r}"
                )
            self.tables[branch] = taocache_signals(tables[branch].cosine, tables[branch].norm_ratio, steps)
        return self.tables

    def can_reuse(self, accumulator: RatioAccumulator, signal: tuple[float, float]) -> bool:
        return taocache_predict(self.params, accumulator, signal)

    def replay(self, branch: int, signals: Sequence[tuple[float, float]]) -> list[bool]:
        name = self.plan.branches[branch]
        early = self.early[name] if self.early is not None else None
        early_code = STEP_RULES[self.params.early][1] if self.early is not None else ""
        decisions, self.rules[name] = taocache_branch(self.params, signals, early, early_code)
        return decisions

    def enter(self, state: BranchState, unit_input: torch.Tensor) -> torch.Tensor | None:
        step = state.step
        reused = super().enter(state, unit_input)
        if reused is None:
            return None
        history = self.history[state.name]
        if step >= self.start:
            cosine, ratio = self.tables[state.name][step]
            reused = history.output + history.delta * (ratio * cosine)
        history.delta = reused - history.output
        history.output = reused
        return reused

    def after_compute(self, state: BranchState, unit_input: torch.Tensor, unit_output: torch.Tensor) -> None:
        history = self.history[state.name]
        if history.output is not None:
            history.delta = unit_output - history.output
        history.output = unit_output

    def step_rules(self) -> dict[str, str]:
        return self.rules
