"""The admin dashboard's reads. Each walks an index range and is bounded, so a refresh costs about
the same with a hundred jobs or a hundred thousand:

- the job list is keyset-paginated on (created_at, id) or (finished_at, id); orderings and searches
  that no index serves (speedup, denoise time, prompt text) look at the newest ``SCAN_LIMIT`` jobs
  that match the other filters;
- queued and running counts are exact; counts of finished jobs cover the last ``COUNTER_WINDOW``;
- the per-strategy summary covers at most ``SUMMARY_LIMIT`` succeeded jobs of the last ``SUMMARY_WINDOW``.
"""

from __future__ import annotations

import math
import re
import statistics
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, String, and_, case, cast, extract, func, or_, select
from sqlalchemy.orm import Session

from core.db import Job, JobStatus, utcnow
from core.jobs import repository

COUNTER_WINDOW = timedelta(hours=24)
RATE_WINDOW = timedelta(hours=1)
SCAN_LIMIT = 10_000
SUMMARY_WINDOW = timedelta(days=7)
SUMMARY_LIMIT = 5_000
WORKERS_SHOWN = 25
# The first 8 hex digits of an id read the same in every backend's text form of a UUID.
SHORT_ID = re.compile(r"[0-9a-fA-F]{4,8}")
BUCKETS = [timedelta(minutes=m) for m in (5, 15, 60, 180, 360, 1440)]
MAX_BUCKETS = 48
SHAPE = (Job.width, Job.height, Job.num_frames, Job.num_inference_steps)


class Sort(StrEnum):
    created = "created"
    finished = "finished"
    speedup = "speedup"
    denoise = "denoise"


SORT_COLUMNS: dict[Sort, Any] = {
    Sort.created: Job.created_at,
    Sort.finished: Job.finished_at,
    Sort.speedup: Job.speedup,
    Sort.denoise: Job.denoise_seconds,
}
INDEXED_SORTS = {Sort.created, Sort.finished}


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    strategy: str | None = None
    model: str | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None
    search: str = ""
    sort: Sort = Sort.created
    descending: bool = True

    @property
    def scans_window(self) -> bool:
        """Whether no index serves this listing, so that it looks only at the newest SCAN_LIMIT matches."""
        return self.sort not in INDEXED_SORTS or (bool(self.search) and _as_uuid(self.search) is None)


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    prompt: str
    status: JobStatus
    model: str
    step: int
    total: int
    strategy: str
    params: dict[str, Any]
    width: int
    height: int
    frames: int
    steps: int
    computed: int
    skipped: int
    denoise_seconds: float | None
    speedup: float | None
    speedup_basis: str | None
    psnr: float | None
    ssim: float | None
    worker: str | None
    created_at: datetime
    finished_at: datetime | None
    error_code: str | None

    @classmethod
    def of(cls, job: Job) -> JobRow:
        metrics = job.metrics or {}
        fidelity = metrics.get("fidelity") or {}
        return cls(
            id=job.id,
            prompt=job.prompt,
            status=job.status,
            model=job.model,
            step=job.progress_step,
            total=job.progress_total or job.num_inference_steps,
            strategy=job.cache_strategy,
            # The resolved parameters (defaults filled in) once the job ran, else what was asked for.
            params=metrics.get("params") or job.cache_params,
            width=job.width,
            height=job.height,
            frames=job.num_frames,
            steps=job.num_inference_steps,
            computed=job.computed_calls,
            skipped=job.skipped_calls,
            denoise_seconds=job.denoise_seconds,
            speedup=job.speedup,
            speedup_basis=metrics.get("speedup_basis"),
            psnr=fidelity.get("psnr"),
            ssim=fidelity.get("ssim"),
            worker=job.worker_id,
            created_at=job.created_at,
            finished_at=job.finished_at,
            error_code=job.error_code,
        )


@dataclass(frozen=True)
class JobPage:
    rows: list[JobRow]
    next_cursor: str | None
    prev_cursor: str | None
    window_applied: bool


@dataclass(frozen=True)
class Counters:
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    finished_last_hour: int


@dataclass(frozen=True)
class QueueState:
    depth: int
    oldest_id: uuid.UUID | None
    oldest_created_at: datetime | None


@dataclass(frozen=True)
class StrategyStats:
    strategy: str
    jobs: int
    mean_speedup: float | None
    median_speedup: float | None
    mean_denoise_seconds: float | None
    measured: int
    mean_psnr: float | None
    mean_ssim: float | None


@dataclass(frozen=True)
class ShapeStats:
    width: int
    height: int
    frames: int
    steps: int
    # strategy -> (mean denoise seconds, jobs)
    denoise: dict[str, tuple[float, int]]


@dataclass(frozen=True)
class SeriesPoint:
    start: datetime
    speedup: float
    jobs: int


@dataclass(frozen=True)
class Summary:
    since: datetime
    until: datetime
    sampled: int
    capped: bool
    strategies: list[StrategyStats]
    shapes: list[ShapeStats]
    bucket: timedelta
    series: dict[str, list[SeriesPoint]]

    @property
    def speedup_ceiling(self) -> float:
        """The top of the charts' speedup axis: the largest value shown, rounded up to a half."""
        values = [s.mean_speedup or 0 for s in self.strategies] + [s.median_speedup or 0 for s in self.strategies]
        values += [p.speedup for points in self.series.values() for p in points]
        return max(1.0, math.ceil(max(values, default=1.0) * 2) / 2)

    @property
    def series_start(self) -> datetime:
        starts = [points[0].start for points in self.series.values() if points]
        return min(starts, default=self.since)


# Job list


def jobs_page(
    session: Session, job_filter: JobFilter, after: str | None = None, before: str | None = None, limit: int = 50
) -> JobPage:
    """One page of jobs in the filter's order; ``after``/``before`` are cursors of the next/previous page."""
    column = SORT_COLUMNS[job_filter.sort]
    conditions = _conditions(job_filter)
    window_applied = False
    if job_filter.scans_window:
        floor = _scan_floor(session, conditions)
        if floor is not None:
            conditions.append(Job.created_at >= floor)
            window_applied = True
    if job_filter.search:
        conditions.append(_search(job_filter.search))
    if job_filter.sort is not Sort.created:
        conditions.append(column.is_not(None))

    backwards = before is not None
    token = before if backwards else after
    cursor = decode_cursor(token, job_filter.sort) if token else None
    descending = job_filter.descending != backwards
    if cursor is not None:
        conditions.append(repository.beyond(column, cursor, descending))
    order = (column.desc(), Job.id.desc()) if descending else (column.asc(), Job.id.asc())
    jobs = list(session.scalars(select(Job).where(*conditions).order_by(*order).limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    if backwards:
        if not more:
            # Walked back to the start: show the first page, full.
            return jobs_page(session, job_filter, limit=limit)
        jobs.reverse()
    has_next = more or backwards
    has_prev = backwards or cursor is not None
    rows = [JobRow.of(job) for job in jobs]
    return JobPage(
        rows=rows,
        next_cursor=encode_cursor(rows[-1], job_filter.sort) if has_next and rows else None,
        prev_cursor=encode_cursor(rows[0], job_filter.sort) if has_prev and rows else None,
        window_applied=window_applied,
    )


def _conditions(job_filter: JobFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if job_filter.status is not None:
        conditions.append(Job.status == job_filter.status)
    if job_filter.strategy:
        conditions.append(Job.cache_strategy == job_filter.strategy)
    if job_filter.model:
        conditions.append(Job.model == job_filter.model)
    if job_filter.created_from is not None:
        conditions.append(Job.created_at >= job_filter.created_from)
    if job_filter.created_before is not None:
        conditions.append(Job.created_at < job_filter.created_before)
    return conditions


def _scan_floor(session: Session, conditions: Sequence[ColumnElement[bool]]) -> datetime | None:
    """created_at of the SCAN_LIMIT-th newest job matching ``conditions``; None when fewer match."""
    query = (
        select(Job.created_at)
        .where(*conditions)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .offset(SCAN_LIMIT - 1)
        .limit(1)
    )
    return session.scalar(query)


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def _search(text: str) -> ColumnElement[bool]:
    """A whole job id, the start of one (4 to 8 hex digits), or words of the prompt."""
    job_id = _as_uuid(text)
    if job_id is not None:
        return Job.id == job_id
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    match = Job.prompt.ilike(f"%{escaped}%", escape="\\")
    if SHORT_ID.fullmatch(text):
        match = or_(match, cast(Job.id, String).like(f"{text.lower()}%"))
    return match


def encode_cursor(row: JobRow, sort: Sort) -> str:
    value = {
        Sort.created: row.created_at,
        Sort.finished: row.finished_at,
        Sort.speedup: row.speedup,
        Sort.denoise: row.denoise_seconds,
    }[sort]
    return repository.encode_cursor(value, row.id)


def decode_cursor(token: str, sort: Sort) -> tuple[Any, uuid.UUID]:
    return repository.decode_cursor(token, datetime.fromisoformat if sort in INDEXED_SORTS else float)


# Counters, queue, workers


def _count(*conditions: ColumnElement[bool]) -> Any:
    return select(func.count()).select_from(Job).where(*conditions).scalar_subquery()


def counters(session: Session, now: datetime | None = None) -> Counters:
    now = now or utcnow()
    since = now - COUNTER_WINDOW
    finished = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
    row = session.execute(
        select(
            _count(Job.status == JobStatus.queued),
            _count(Job.status == JobStatus.running),
            *(_count(Job.status == status, Job.created_at >= since) for status in finished),
            _count(Job.finished_at >= now - RATE_WINDOW),
        )
    ).one()
    return Counters(*row)


def queue_state(session: Session, depth: int) -> QueueState:
    oldest = session.execute(
        select(Job.id, Job.created_at)
        .where(Job.status == JobStatus.queued)
        .order_by(Job.created_at.asc(), Job.id.asc())
        .limit(1)
    ).first()
    return QueueState(depth, *(oldest or (None, None)))


# Per-strategy summary


def summary(session: Session, now: datetime | None = None) -> Summary:
    """Per strategy and shape over the newest succeeded jobs of the window. The database aggregates;
    only the speedups (for medians) come back one by one."""
    now = now or utcnow()
    since = now - SUMMARY_WINDOW

    def recent(*columns: Any) -> Any:
        return (
            select(Job.cache_strategy.label("strategy"), *columns)
            .where(Job.status == JobStatus.succeeded, Job.created_at >= since)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(SUMMARY_LIMIT)
            .subquery()
        )

    def measured(name: str) -> Any:
        # Only jobs run with compare=true measure fidelity against the uncached run (a remix's is against its
        # source); the test spares parsing every other job's JSON.
        uncached = and_(Job.compare, Job.remix_of.is_(None))
        return case((uncached, Job.metrics["fidelity"][name].as_float()), else_=None).label(name)

    jobs = recent(*SHAPE, Job.denoise_seconds, measured("psnr"), measured("ssim"), Job.finished_at)
    shape = [jobs.c[column.key] for column in SHAPE]
    sums = [
        aggregate(jobs.c[name]).label(f"{name}_{label}")
        for name in ("denoise_seconds", "psnr", "ssim")
        for label, aggregate in (("sum", func.sum), ("count", func.count))
    ]
    groups = session.execute(
        select(jobs.c.strategy, *shape, func.count().label("jobs"), func.min(jobs.c.finished_at).label("oldest"), *sums)
        .group_by(jobs.c.strategy, *shape)
        .order_by(jobs.c.strategy, *shape)
    ).all()

    speeds = recent(Job.speedup)
    speedups: dict[str, list[float]] = defaultdict(list)
    for name, speedup in session.execute(
        select(speeds.c.strategy, speeds.c.speedup).where(speeds.c.speedup.is_not(None))
    ):
        speedups[name].append(speedup)

    oldest = min((group.oldest for group in groups if group.oldest is not None), default=now)
    bucket = _bucket_size(now - oldest)
    sampled = sum(group.jobs for group in groups)
    return Summary(
        since=since,
        until=now,
        sampled=sampled,
        capped=sampled == SUMMARY_LIMIT,
        strategies=[
            _strategy_stats(key[0], members, speedups[key[0]]) for key, members in _grouped(groups, "strategy")
        ],
        shapes=[
            ShapeStats(
                *(getattr(members[0], column.key) for column in SHAPE),
                denoise={
                    g.strategy: (g.denoise_seconds_sum / g.denoise_seconds_count, g.denoise_seconds_count)
                    for g in members
                    if g.denoise_seconds_count
                },
            )
            for _, members in _grouped(groups, *(column.key for column in SHAPE))
        ],
        bucket=bucket,
        series=_series(session, recent(Job.speedup, Job.finished_at), bucket),
    )


def _grouped(rows: Sequence[Any], *keys: str) -> list[tuple[Any, list[Any]]]:
    grouped: dict[Any, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[tuple(getattr(row, key) for key in keys)].append(row)
    return sorted(grouped.items())


def _ratio(total: float | None, count: int) -> float | None:
    return total / count if count and total is not None else None


def _strategy_stats(name: str, groups: Sequence[Any], speedups: list[float]) -> StrategyStats:
    def total(column: str) -> Any:
        return sum(getattr(group, column) or 0 for group in groups)

    return StrategyStats(
        strategy=name,
        jobs=total("jobs"),
        mean_speedup=statistics.fmean(speedups) if speedups else None,
        median_speedup=statistics.median(speedups) if speedups else None,
        mean_denoise_seconds=_ratio(total("denoise_seconds_sum"), total("denoise_seconds_count")),
        # SSIM, not PSNR: identical frames have no finite PSNR (stored as null) but do have an SSIM.
        measured=total("ssim_count"),
        mean_psnr=_ratio(total("psnr_sum"), total("psnr_count")),
        mean_ssim=_ratio(total("ssim_sum"), total("ssim_count")),
    )


def _bucket_size(span: timedelta) -> timedelta:
    return next((size for size in BUCKETS if span / size <= MAX_BUCKETS), BUCKETS[-1])


def _series(session: Session, jobs: Any, bucket: timedelta) -> dict[str, list[SeriesPoint]]:
    """Mean speedup per strategy and time bucket (by finish time)."""
    size = int(bucket.total_seconds())
    index = cast(extract("epoch", jobs.c.finished_at), BigInteger) // size
    series: dict[str, list[SeriesPoint]] = defaultdict(list)
    for name, start, mean, count in session.execute(
        select(jobs.c.strategy, index, func.avg(jobs.c.speedup), func.count(jobs.c.speedup))
        .where(jobs.c.speedup.is_not(None), jobs.c.finished_at.is_not(None))
        .group_by(jobs.c.strategy, index)
        .order_by(jobs.c.strategy, index)
    ):
        series[name].append(SeriesPoint(datetime.fromtimestamp(start * size, UTC), float(mean), count))
    return dict(series)
