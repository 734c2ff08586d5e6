"""Prometheus figures read from the database at scrape time, so every API replica reports the same."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core.db import Job, JobStatus, session_scope, utcnow
from core.jobs import dashboard, repository

WINDOW = timedelta(hours=1)


class JobCollector(Collector):
    def __init__(self, database: str) -> None:
        self.database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with session_scope(self.database) as session:
            counts = repository.counts_by_status(session)
            oldest = dashboard.queue_state(session, counts[JobStatus.queued]).oldest_created_at
            since = utcnow() - WINDOW
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


@lru_cache
def registry_for(database: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(database))
    return registry
