"""A job's states and the events its webhooks carry."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class EventType(StrEnum):
    started = "job.started"
    succeeded = "job.succeeded"
    failed = "job.failed"
    canceled = "job.canceled"
    # A sampled job's fidelity receipt was measured (metrics.fidelity), after the job succeeded.
    fidelity = "job.fidelity"

    @classmethod
    def on(cls, status: JobStatus) -> EventType:
        """The event a job's move into ``status`` sends."""
        return cls(f"job.{status.value}")


DEFAULT_EVENTS: tuple[EventType, ...] = (EventType.succeeded, EventType.failed, EventType.canceled, EventType.fidelity)
