"""EasyCache: runtime-adaptive reuse of the whole model's transformation; no calibration.

Reference: github.com/H-EmbodVis/EasyCache (EasyCache4Wan2.1). The cached unit is the whole
transformer: a reused call returns ``x_t + (v - x)`` from the branch's last computed call.
After each computed first-branch call, the transformation rate
``k = mean|v - v_prev| / mean|x - x_prev|`` is taken between consecutive computed calls. Per
step, ``E += k * mean|x_t - x_(t-1)| / mean|v_prev|``; reuse while ``E < threshold``. The first
branch decides and the other CFG branches follow its decision for the step. As in the
reference, the first 10 steps and the last one always compute (``warmup_ratio`` instead
scales the warm-up with the step count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.caching.base import BranchState, RunPlan, TimestepCache
from core.contract.strategies import EasyCacheParams


@dataclass
class _Accumulator:
    error: float = 0.0


@dataclass
class _History:
    previous_input: torch.Tensor | None = None
    computed_input: torch.Tensor | None = None
    computed_output: torch.Tensor | None = None
    rate: float | None = None


def _mean_abs(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.abs().float().mean()


class EasyCache(TimestepCache):
    name = "easycache"
    scope = "model"
    params: EasyCacheParams

    def prepare(self, plan: RunPlan) -> None:
        super().prepare(plan)
        self.history = _History()

    def new_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def forced(self, step: int, branch: int) -> bool:
        steps = self.plan.num_steps
        ratio = self.params.warmup_ratio
        warmup = self.params.warmup_steps if ratio is None else int(steps * ratio)
        return step < warmup or step == steps - 1

    def should_compute(self, state: BranchState, unit_input: torch.Tensor) -> bool:
        if state.index > 0:
            leader = self.states[self.plan.branches[0]]
            return leader.decisions[state.step]
        return super().should_compute(state, unit_input)

    def runtime_signal(self, state: BranchState, unit_input: torch.Tensor) -> float | None:
        history = self.history
        signal = None
        if history.previous_input is not None and history.rate is not None:
            change = _mean_abs(unit_input - history.previous_input) / _mean_abs(history.computed_output)
            signal = history.rate * change.item()
        history.previous_input = unit_input.clone()
        return signal

    def can_reuse(self, accumulator: _Accumulator, signal: float) -> bool:
        accumulator.error += signal
        return accumulator.error < self.params.threshold

    def after_compute(self, state: BranchState, unit_input: torch.Tensor, unit_output: torch.Tensor) -> None:
        if state.index > 0:
            return
        history = self.history
        if history.computed_output is not None:
            output_change = _mean_abs(unit_output - history.computed_output)
            input_change = _mean_abs(unit_input - history.computed_input)
            history.rate = (output_change / input_change).item()
        history.computed_input = unit_input.clone()
        history.computed_output = unit_output.clone()
