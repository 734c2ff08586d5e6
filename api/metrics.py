"""Prometheus figures read from the database at scrape time, so every API replica reports the same."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core import health
from core.db import Job, JobStatus, session_scope, utcnow
from core.jobs import dashboard, fleet, receipts, repository, workers

WINDOW = timedelta(hours=1)


class JobCollector(Collector):
    def __init__(self, database: str, models: tuple[str, ...], heartbeat_seconds: float) -> None:
        self.database = database
        self.models = models
        self.heartbeat_seconds = heartbeat_seconds

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with session_scope(self.database) as session:
            per_model = fleet.figures(session, self.models)
            live = workers.by_model(session, self.heartbeat_seconds)
            counts = repository.counts_by_status(session)
            oldest = dashboard.queue_state(session, counts[JobStatus.queued]).oldest_created_at
            since = utcnow() - WINDOW
            receipt_totals = receipts.totals(session)
            recent = session.execute(
                select(
                    Job.cache_strategy,
                    func.count(),
                    func.avg(Job.speedup),
                    func.avg(Job.denoise_seconds / Job.num_inference_steps),
                )
                .where(Job.status == JobStatus.succeeded, Job.finished_at >= since)
                .group_by(Job.cache_strategy)
            ).all()

        jobs = GaugeMetricFamily("skipstep_jobs", "Jobs by status.", labels=["status"])
        for status, count in counts.items():
            jobs.add_metric([status.value], count)
        yield jobs
        yield GaugeMetricFamily("skipstep_queue_depth", "Jobs waiting for a worker.", value=counts[JobStatus.queued])
        yield GaugeMetricFamily(
            "skipstep_oldest_queued_seconds",
            "Age of the oldest waiting job.",
            value=(utcnow() - oldest).total_seconds() if oldest else 0.0,
        )
        finished = GaugeMetricFamily(
            "skipstep_recent_jobs_succeeded", "Jobs succeeded in the last hour.", labels=["strategy"]
        )
        speedup = GaugeMetricFamily(
            "skipstep_recent_speedup", "Mean cache speedup over the last hour.", labels=["strategy"]
        )
        step = GaugeMetricFamily(
            "skipstep_recent_step_seconds", "Mean denoise seconds per step over the last hour.", labels=["strategy"]
        )
        for strategy, count, mean_speedup, mean_step in recent:
            finished.add_metric([strategy], count)
            speedup.add_metric([strategy], mean_speedup or 0.0)
            step.add_metric([strategy], mean_step or 0.0)
        yield from (finished, speedup, step)
        yield from _model_families(per_model, live)
        taken = CounterMetricFamily(
            "skipstep_fidelity_receipts", "Fidelity receipts measured, per model.", labels=["model"]
        )
        short = CounterMetricFamily(
            "skipstep_fidelity_shortfalls",
            "Receipts whose PSNR fell below the frontier's prediction by more than SKIPSTEP_RECEIPT_MARGIN_DB.",
            labels=["model"],
        )
        for model in per_model:
            tally = receipt_totals.get(model, receipts.Tally(0, 0))
            taken.add_metric([model], tally.total)
            short.add_metric([model], tally.shortfalls)
        yield from (taken, short)


def _model_families(
    per_model: dict[str, fleet.ModelFigures], live: dict[str, workers.ModelWorkers]
) -> Iterator[GaugeMetricFamily]:
    """The same figures per model (label ``model``), for a fleet that serves several."""
    now = utcnow()
    gauges = {
        "queue": GaugeMetricFamily("skipstep_model_queue_depth", "Jobs waiting, per model.", labels=["model"]),
        "running": GaugeMetricFamily("skipstep_model_running", "Jobs running, per model.", labels=["model"]),
        "oldest": GaugeMetricFamily(
            "skipstep_model_oldest_queued_seconds", "Age of the model's oldest waiting job.", labels=["model"]
        ),
        "live": GaugeMetricFamily("skipstep_model_workers_live", "Live workers, per model.", labels=["model"]),
        "idle": GaugeMetricFamily("skipstep_model_workers_idle", "Live workers holding no job.", labels=["model"]),
        "warming": GaugeMetricFamily(
            "skipstep_model_workers_warming", "Live workers compiling and warming up, per model.", labels=["model"]
        ),
        "wait": GaugeMetricFamily(
            "skipstep_model_wait_seconds",
            "Submit-to-start wait of the jobs finished in the last hour (mean, p95).",
            labels=["model", "stat"],
        ),
        "denoise": GaugeMetricFamily(
            "skipstep_model_denoise_seconds_mean", "Mean denoise seconds of the last hour's jobs.", labels=["model"]
        ),
        "speedup": GaugeMetricFamily(
            "skipstep_model_speedup_mean", "Mean cache speedup of the last hour's jobs.", labels=["model"]
        ),
        "succeeded": GaugeMetricFamily(
            "skipstep_model_recent_jobs_succeeded",
            "Jobs succeeded in the last hour, per model and strategy.",
            labels=["model", "strategy"],
        ),
        "failed": GaugeMetricFamily(
            "skipstep_model_recent_jobs_failed", "Jobs failed in the last hour, per model.", labels=["model"]
        ),
    }
    for model, numbers in per_model.items():
        pool = live.get(model, workers.ModelWorkers(0, 0, []))
        gauges["queue"].add_metric([model], numbers.queued)
        gauges["running"].add_metric([model], numbers.running)
        gauges["oldest"].add_metric([model], numbers.oldest_queued_seconds(now))
        gauges["live"].add_metric([model], pool.live)
        gauges["idle"].add_metric([model], pool.idle)
        gauges["warming"].add_metric([model], pool.warming)
        gauges["failed"].add_metric([model], numbers.failed)
        if numbers.wait_mean_seconds is not None and numbers.wait_p95_seconds is not None:
            gauges["wait"].add_metric([model, "mean"], numbers.wait_mean_seconds)
            gauges["wait"].add_metric([model, "p95"], numbers.wait_p95_seconds)
        if numbers.denoise_mean_seconds is not None:
            gauges["denoise"].add_metric([model], numbers.denoise_mean_seconds)
        if numbers.speedup_mean is not None:
            gauges["speedup"].add_metric([model], numbers.speedup_mean)
        for strategy, count in numbers.succeeded_by_strategy.items():
            gauges["succeeded"].add_metric([model, strategy], count)
    yield from gauges.values()


@lru_cache
def registry_for(database: str, models: tuple[str, ...], heartbeat_seconds: float) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(database, models, heartbeat_seconds))
    return registry


def dependency_registry(checks: dict[str, str]) -> CollectorRegistry:
    """One scrape's ``skipstep_dependency_up``: 1 where the dependency answered (core.health), 0 where it did not;
    a dependency that is not configured is left out."""
    gauge = GaugeMetricFamily(
        "skipstep_dependency_up",
        "Whether the database, the broker and the storage answer this API process (1) or not (0).",
        labels=["dependency"],
    )
    for name, state in checks.items():
        if state != health.NOT_CONFIGURED:
            gauge.add_metric([name], 1.0 if state == health.OK else 0.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(gauge))
    return registry


class _Fixed(Collector):
    def __init__(self, *families: GaugeMetricFamily) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families
