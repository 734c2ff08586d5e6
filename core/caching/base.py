"""The shared skeleton of every timestep cache.

A strategy decides, per denoising step and CFG branch, whether the cached unit (a span of the
transformer's block stack, or the whole model for EasyCache) runs, or whether the branch's
cached residual (unit output minus unit input, from its last computed call; or its Taylor
forecast) is added to the unit's input instead. This class owns everything around that
decision: per-branch state, the residual, forced computes, counting, timing and the figures.

A strategy supplies its parameter schema and its rule:

- ``new_accumulator`` — the state its rule accumulates between computes (reset on every compute);
- ``forced`` — the steps it always computes (step 0 always computes: nothing is cached yet);
- ``can_reuse`` — given the accumulator and this step's signal, may the cached residual be reused?
- ``unit_blocks`` — which blocks form the unit (default: all; blocks before it always run, and
  ``BranchState.call_input`` holds their input, so a strategy can compare what they did);
- the signal, either known before denoising (``signals``: then the whole schedule is computed
  ahead and the loop never synchronises with the device to decide), or measured on-line
  (``runtime_signal``, with ``after_compute`` to update what it measures).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel

from core.caching.forecast import TaylorSeries
from core.caching.profiles import Profile
from core.contract.schedules import replay
from core.contract.strategies import STRATEGIES, CacheParams, PredictorParams
from core.errors import CacheConfigError
from core.models.families import ModelFamily
from core.parallel import reduced_relative_change


@dataclass(frozen=True)
class RunPlan:
    """What a cache is told before denoising starts."""

    num_steps: int
    branches: tuple[str, ...]
    timesteps: torch.Tensor
    transformer: torch.nn.Module
    family: ModelFamily
    # The group the unit's tokens are sharded over (context parallelism, core.parallel); None: all here.
    sequence_group: Any = None


@dataclass
class BranchState:
    index: int
    name: str
    accumulator: Any
    step: int = 0
    computing: bool = True
    # Input of the transformer's first block in this call, kept while the unit starts later.
    call_input: torch.Tensor | None = None
    unit_input: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    forecast: TaylorSeries | None = None
    timer_token: Any = None
    decisions: list[bool] = field(default_factory=list)
    # Computed on another rank (CFG-parallel): its decisions are known here, its calls not timed.
    followed: bool = False


class CallTimer:
    """Sums the time of computed calls; on CUDA with events, read once at the end."""

    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._cpu_seconds = 0.0

    def start(self, device: torch.device) -> Any:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, token: Any) -> None:
        if isinstance(token, float):
            self._cpu_seconds += time.perf_counter() - token
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._events.append((token, end))

    def seconds(self) -> float:
        if self._events:
            torch.cuda.synchronize()
        return self._cpu_seconds + sum(start.elapsed_time(end) for start, end in self._events) / 1000


class BranchFigures(BaseModel):
    computed: int
    skipped: int
    # One character per step: "C" computed, "." cached residual reused.
    schedule: str


class RuledBranchFigures(BranchFigures):
    # One character per step: which rule decided it (composite strategies; each module lists its letters).
    rules: str


def branch_figures(decisions: Sequence[bool]) -> BranchFigures:
    computed = sum(decisions)
    return BranchFigures(
        computed=computed,
        skipped=len(decisions) - computed,
        schedule="".join("C" if d else "." for d in decisions),
    )


class ScheduleFigures(BaseModel):
    """A schedule known before denoising: what a job can report the moment it is planned."""

    steps_total: int
    branches: dict[str, BranchFigures]
    ideal_speedup: float


class CacheReport(BaseModel):
    strategy: str
    params: dict[str, Any]
    profile: str | None
    scheduled_ahead: bool
    steps_total: int
    branches: dict[str, BranchFigures]
    denoise_seconds: float
    # Mean time of one computed call of the cached unit (block stack, or whole model).
    seconds_per_computed_call: float
    # Denoise time per computed step (computed calls over CFG branches).
    seconds_per_computed_step: float
    # Denoise time plus what the skipped calls would have cost at the measured per-call time.
    estimated_full_seconds: float
    speedup: float
    # Total calls over computed calls: the speedup if nothing but the cached unit cost time.
    ideal_speedup: float


class TimestepCache:
    name: ClassVar[str]
    # From the strategy's entry in the request contract (core.contract.strategies.STRATEGIES).
    Params: ClassVar[type[CacheParams]] = CacheParams
    # The profile field this strategy reads (None: it needs no calibration).
    needs: ClassVar[str | None] = None
    scope: ClassVar[Literal["blocks", "model"]] = "blocks"
    # Whether computed calls keep their residual; a cache that never reuses skips that work.
    reuses: ClassVar[bool] = True
    # Whether the rule holds when each rank sees a shard of the tokens (context parallelism).
    sequence_parallel: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = STRATEGIES.get(getattr(cls, "name", ""))
        if info is not None:
            cls.Params, cls.needs = info.Params, info.needs

    def __init__(self, params: CacheParams | None = None, profile: Profile | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.profile = profile
        self.plan: RunPlan | None = None
        self.schedule: dict[str, list[bool]] | None = None
        self.states: dict[str, BranchState] = {}
        self.timer = CallTimer()

    # -- the strategy's rule ---------------------------------------------------------------

    @property
    def predictor_order(self) -> int:
        """Taylor order of what a skipped call adds (0: the last residual as it was)."""
        if isinstance(self.params, PredictorParams) and self.params.predictor == "taylorseer":
            return self.params.predictor_order
        return 0

    def unit_blocks(self, num_blocks: int) -> tuple[int, int]:
        """The cached blocks, ``[start, end)``; blocks outside always run."""
        return 0, num_blocks

    def new_accumulator(self) -> Any:
        return None

    def forced(self, step: int, branch: int) -> bool:
        return False

    def signals(self) -> dict[str, Sequence[float]] | None:
        """Per-branch, per-step signals known before denoising; None for on-line strategies."""
        return None

    def runtime_signal(self, state: BranchState, unit_input: torch.Tensor) -> float | None:
        raise NotImplementedError(f"{self.name} has neither ahead-of-time nor runtime signals")

    def can_reuse(self, accumulator: Any, signal: float) -> bool:
        return False

    def after_compute(self, state: BranchState, unit_input: torch.Tensor, unit_output: torch.Tensor) -> None:
        """Called after each computed call, with the unit's input and output."""

    def step_rules(self) -> dict[str, str] | None:
        """Per branch, one letter per step naming the rule that decided it (composites); None for one rule."""
        return None

    def inside_blocks(self, blocks: Sequence[torch.nn.Module]) -> AbstractContextManager[None]:
        """What the strategy changes inside the blocks for the run (Chipmunk's sparse-delta layers); default none."""
        return nullcontext()

    # -- the skeleton ----------------------------------------------------------------------

    def prepare(self, plan: RunPlan) -> None:
        """Reset for a new run; compute the whole schedule now if the signals allow it."""
        if plan.sequence_group is not None and not self.sequence_parallel:
            raise CacheConfigError(
                f"cache.strategy: {self.name} cannot run under sequence parallelism (ulysses, ring): "
                "its rule needs every token of a call on one rank"
            )
        self.plan = plan
        self.states = {}
        self.timer = CallTimer()
        signals = self.signals()
        self.schedule = None
        if signals is not None:
            self.schedule = {branch: self.replay(index, signals[branch]) for index, branch in enumerate(plan.branches)}

    def replay(self, branch: int, signals: Sequence[float]) -> list[bool]:
        """The compute (True) / reuse (False) decisions of one branch for its per-step signals."""
        return replay(
            self.plan.num_steps, signals, lambda step: self.forced(step, branch), self.new_accumulator, self.can_reuse
        )

    def planned(self) -> ScheduleFigures | None:
        if self.schedule is None:
            return None
        decisions = list(self.schedule.values())
        return ScheduleFigures(
            steps_total=self.plan.num_steps,
            branches=self._with_rules({branch: branch_figures(d) for branch, d in self.schedule.items()}),
            ideal_speedup=_ratio(sum(map(len, decisions)), sum(map(sum, decisions))),
        )

    def _with_rules(self, branches: dict[str, BranchFigures]) -> dict[str, BranchFigures]:
        rules = self.step_rules()
        if rules is None:
            return branches
        return {
            name: RuledBranchFigures(**figures.model_dump(), rules=rules[name]) for name, figures in branches.items()
        }

    def state_for(self, branch: str) -> BranchState:
        state = self.states.get(branch)
        if state is None:
            if branch not in self.plan.branches:
                raise RuntimeError(f"transformer called in cache context {branch!r}; planned {self.plan.branches}")
            state = BranchState(self.plan.branches.index(branch), branch, self.new_accumulator())
            if self.predictor_order:
                state.forecast = TaylorSeries(self.predictor_order)
            self.states[branch] = state
        return state

    def should_compute(self, state: BranchState, unit_input: torch.Tensor) -> bool:
        if self.schedule is not None:
            return self.schedule[state.name][state.step]
        signal = self.runtime_signal(state, unit_input)
        if state.residual is None or self.forced(state.step, state.index) or signal is None:
            return True
        return not self.can_reuse(state.accumulator, signal)

    def enter(self, state: BranchState, unit_input: torch.Tensor) -> torch.Tensor | None:
        """Begin one call of the unit; returns the reused output when the call is skipped."""
        compute = self.should_compute(state, unit_input)
        state.decisions.append(compute)
        state.computing = compute
        if not compute:
            if state.forecast is not None:
                return unit_input + state.forecast.predict(state.step)
            return unit_input + state.residual
        state.accumulator = self.new_accumulator()
        state.unit_input = unit_input
        state.timer_token = self.timer.start(unit_input.device)
        return None

    def exit(self, state: BranchState, unit_output: torch.Tensor) -> None:
        if state.computing:
            self.timer.stop(state.timer_token)
            if self.reuses:
                state.residual = unit_output - state.unit_input
                if state.forecast is not None:
                    state.forecast.update(state.step, state.residual)
            self.after_compute(state, state.unit_input, unit_output)
            state.unit_input = None
        state.call_input = None
        state.step += 1

    def follow(self, branch: str, computed: bool) -> None:
        """Record the decision another rank took for a branch this rank does not compute (CFG-parallel)."""
        state = self.state_for(branch)
        state.followed = True
        state.decisions.append(computed)
        state.step += 1

    def calls(self) -> tuple[int, int]:
        """(computed, skipped) calls so far in this run."""
        decisions = [d for state in self.states.values() for d in state.decisions]
        return sum(decisions), len(decisions) - sum(decisions)

    def report(self, denoise_seconds: float) -> CacheReport:
        computed, skipped = self.calls()
        timed = sum(sum(state.decisions) for state in self.states.values() if not state.followed)
        per_call = self.timer.seconds() / timed if timed else 0.0
        estimated_full = denoise_seconds + skipped * per_call
        return CacheReport(
            strategy=self.name,
            params=self.params.model_dump(),
            profile=self.profile.name if self.profile else None,
            scheduled_ahead=self.schedule is not None,
            steps_total=self.plan.num_steps,
            branches=self._with_rules({name: branch_figures(state.decisions) for name, state in self.states.items()}),
            denoise_seconds=denoise_seconds,
            seconds_per_computed_call=per_call,
            seconds_per_computed_step=_ratio(denoise_seconds * len(self.states), computed),
            estimated_full_seconds=estimated_full,
            speedup=_ratio(estimated_full, denoise_seconds),
            ideal_speedup=_ratio(computed + skipped, computed),
        )


def relative_change(current: torch.Tensor, previous: torch.Tensor, group: Any = None) -> float:
    """``mean|current - previous| / mean|previous|``, as diffusers' FirstBlockCache and cache-dit compare; over
    every rank's shard of the tokens where ``group`` shards them (``RunPlan.sequence_group``)."""
    if group is not None:
        return reduced_relative_change(current, previous, group)
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
