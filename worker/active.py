"""The job a GPU worker is running, shared by the job's thread and the heartbeat thread, and the ways
the heartbeat (or the database) can ask it to stop at the next step boundary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.db import Job


class StopJob(Exception):
    """Raised at a step boundary to stop the pipeline; the subclass says why."""


class JobCanceled(StopJob):
    pass


class JobTimedOut(StopJob):
    pass


class HandedBack(StopJob):
    """The worker is shutting down and its grace period is over."""


class LeaseLost(StopJob):
    """Another worker holds the job now (this one was presumed dead): stop and write nothing."""


@dataclass
class ActiveJob:
    job: Job
    started: float = field(default_factory=time.monotonic)
    # When the job last showed a sign of life (a step, a stage); the heartbeat's stall watch reads it.
    last_sign: float = field(default_factory=time.monotonic)
    # Set by the heartbeat thread, raised by the step callback at the next step boundary.
    stop: StopJob | None = None

    def alive(self) -> None:
        self.last_sign = time.monotonic()
