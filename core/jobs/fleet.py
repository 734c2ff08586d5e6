"""Each model's figures across the fleet: what waits, what runs, and how its recent jobs went. One read for
``GET /models``, ``/metrics`` and the dashboard's model summary, bounded like the dashboard's: counts of
waiting and running jobs are exact; the recent figures cover jobs finished within ``WINDOW`` (at most
``SAMPLE_LIMIT`` of them for the wait times)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import Job, JobStatus, utcnow

WINDOW = timedelta(hours=1)
SAMPLE_LIMIT = 5_000


@dataclass
class ModelFigures:
    queued: int = 0
    running: int = 0
    oldest_queued_at: datetime | None = None
    # Jobs of the model that succeeded within WINDOW, in all and per cache strategy.
    succeeded: int = 0
    succeeded_by_strategy: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    # Seconds from submit to start of the jobs finished within WINDOW.
    wait_mean_seconds: float | None = None
    wait_p95_seconds: float | None = None
    # Means over the jobs that succeeded within WINDOW.
    denoise_mean_seconds: float | None = None
    speedup_mean: float | None = None

    @property
    def jobs_per_hour(self) -> float:
        return self.succeeded * (timedelta(hours=1) / WINDOW)

    def oldest_queued_seconds(self, now: datetime) -> float:
        return (now - self.oldest_queued_at).total_seconds() if self.oldest_queued_at else 0.0


def figures(session: Session, models: Iterable[str]) -> dict[str, ModelFigures]:
    """Figures for each of ``models`` (the configured ones), and for any other model that has jobs waiting,
    running or finished lately."""
    result: dict[str, ModelFigures] = {model: ModelFigures() for model in models}
    active = session.execute(
        select(Job.model, Job.status, func.count(), func.min(Job.created_at))
        .where(Job.status.in_((JobStatus.queued, JobStatus.running)))
        .group_by(Job.model, Job.status)
    )
    for model, status, count, oldest in active:
        figures_of = result.setdefault(model, ModelFigures())
        if status == JobStatus.queued:
            figures_of.queued, figures_of.oldest_queued_at = count, oldest
        else:
            figures_of.running = count

    since = utcnow() - WINDOW
    succeeded = session.execute(
        select(Job.model, Job.cache_strategy, func.count(), func.sum(Job.denoise_seconds), func.sum(Job.speedup))
        .where(Job.status == JobStatus.succeeded, Job.finished_at >= since)
        .group_by(Job.model, Job.cache_strategy)
    ).all()
    totals: dict[str, list[float]] = {}
    for model, strategy, count, denoise, speedup in succeeded:
        figures_of = result.setdefault(model, ModelFigures())
        figures_of.succeeded += count
        figures_of.succeeded_by_strategy[strategy] = count
        sums = totals.setdefault(model, [0.0, 0.0])
        sums[0] += denoise or 0.0
        sums[1] += speedup or 0.0
    for model, (denoise, speedup) in totals.items():
        count = result[model].succeeded
        result[model].denoise_mean_seconds, result[model].speedup_mean = denoise / count, speedup / count

    failed = session.execute(
        select(Job.model, func.count())
        .where(Job.status == JobStatus.failed, Job.finished_at >= since)
        .group_by(Job.model)
    )
    for model, count in failed:
        result.setdefault(model, ModelFigures()).failed = count

    waits: dict[str, list[float]] = {}
    recent = session.execute(
        select(Job.model, Job.created_at, Job.started_at)
        .where(Job.finished_at >= since, Job.started_at.isnot(None))
        .order_by(Job.finished_at.desc())
        .limit(SAMPLE_LIMIT)
    )
    for model, created_at, started_at in recent:
        waits.setdefault(model, []).append(max(0.0, (started_at - created_at).total_seconds()))
    for model, values in waits.items():
        values.sort()
        figures_of = result.setdefault(model, ModelFigures())
        figures_of.wait_mean_seconds = sum(values) / len(values)
        # Nearest rank: the smallest wait that at least 95% of the jobs did not exceed.
        figures_of.wait_p95_seconds = values[math.ceil(0.95 * len(values)) - 1]
    return result
