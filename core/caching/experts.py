"""One cache per transformer: Wan2.2 A14B's high-noise and low-noise experts each get their own strategy
instance, planned over the steps that expert runs, with its own per-branch state, schedule and profile
tables. A residual cached under one expert is never added under the other; the job's figures name each
expert's branches ``<expert>/<branch>``. A model with one transformer has one expert, named "", and its figures
are the strategy's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from core.caching.base import BranchFigures, CacheReport, RunPlan, ScheduleFigures, TimestepCache, _ratio
from core.caching.hooks import CfgParallel, attached
from core.contract.experts import high_noise_steps, qualified, split
from core.models.families import ModelFamily


@dataclass
class ExpertCache:
    name: str
    transformer: torch.nn.Module
    steps: range
    cache: TimestepCache


def expert_ranges(
    experts: list[tuple[str, torch.nn.Module]], timesteps: torch.Tensor, boundary: float | None, train: int
) -> list[tuple[str, torch.nn.Module, range]]:
    """Each expert's steps, as the pipeline switches: the high-noise one while ``t >= boundary * train``."""
    steps = len(timesteps)
    if len(experts) == 1:
        return [(experts[0][0], experts[0][1], range(steps))]
    transformers = dict(experts)
    high = high_noise_steps(timesteps.tolist(), boundary, train)
    return [(name, transformers[name], span) for name, span in split(steps, high)]


class ExpertCaches:
    """The caches of one run, one per expert, seen as one: planned figures, counts and the report."""

    def __init__(self, experts: list[ExpertCache]) -> None:
        self.experts = experts

    @property
    def single(self) -> TimestepCache | None:
        return self.experts[0].cache if len(self.experts) == 1 and not self.experts[0].name else None

    def prepare(
        self, branches: tuple[str, ...], timesteps: torch.Tensor, family: ModelFamily, sequence_group: Any = None
    ) -> None:
        for expert in self.experts:
            expert.cache.prepare(
                RunPlan(
                    num_steps=len(expert.steps),
                    branches=branches,
                    timesteps=timesteps[expert.steps.start : expert.steps.stop],
                    transformer=expert.transformer,
                    family=family,
                    sequence_group=sequence_group,
                )
            )

    @contextmanager
    def attached(self, cfg: CfgParallel | None = None) -> Iterator[None]:
        """Each expert's cache hooked into its transformer; ``cfg``: the run's CFG-parallel exchange, if any."""
        with ExitStack() as stack:
            for expert in self.experts:
                stack.enter_context(attached(expert.cache, expert.transformer, cfg))
            yield

    def planned(self) -> ScheduleFigures | None:
        if self.single is not None:
            return self.single.planned()
        plans = [(expert.name, expert.cache.planned()) for expert in self.experts]
        if any(plan is None for _, plan in plans):
            return None
        branches = self._qualified({name: plan.branches for name, plan in plans})
        return ScheduleFigures(
            steps_total=sum(plan.steps_total for _, plan in plans),
            branches=branches,
            ideal_speedup=_ideal(branches),
        )

    def calls(self) -> tuple[int, int]:
        counts = [expert.cache.calls() for expert in self.experts]
        return sum(c for c, _ in counts), sum(s for _, s in counts)

    def report(self, denoise_seconds: float) -> CacheReport:
        if self.single is not None:
            return self.single.report(denoise_seconds)
        reports = [(expert.name, expert.cache.report(0.0)) for expert in self.experts]
        first = reports[0][1]
        computed, skipped = self.calls()
        per_call = _ratio(sum(expert.cache.timer.seconds() for expert in self.experts), computed)
        estimated_full = denoise_seconds + skipped * per_call
        branches = self._qualified({name: report.branches for name, report in reports})
        cfg_branches = len(first.branches)
        return CacheReport(
            strategy=first.strategy,
            params=first.params,
            profile=first.profile,
            scheduled_ahead=all(report.scheduled_ahead for _, report in reports),
            steps_total=sum(report.steps_total for _, report in reports),
            branches=branches,
            denoise_seconds=denoise_seconds,
            seconds_per_computed_call=per_call,
            seconds_per_computed_step=_ratio(denoise_seconds * cfg_branches, computed),
            estimated_full_seconds=estimated_full,
            speedup=_ratio(estimated_full, denoise_seconds),
            ideal_speedup=_ideal(branches),
        )

    @staticmethod
    def _qualified(per_expert: dict[str, dict[str, BranchFigures]]) -> dict[str, BranchFigures]:
        return {
            qualified(expert, branch): figures
            for expert, branches in per_expert.items()
            for branch, figures in branches.items()
        }


def _ideal(branches: dict[str, BranchFigures]) -> float:
    computed = sum(figures.computed for figures in branches.values())
    return _ratio(sum(figures.computed + figures.skipped for figures in branches.values()), computed)
