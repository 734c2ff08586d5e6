"""A GPU worker's heartbeat thread: it reports the worker alive, renews the running job's lease, watches
the job (too long, stalled, shutdown grace over) and sweeps up after other workers.

A job is stopped cooperatively at its next step boundary (the step callback raises what the heartbeat
set). A job that shows no sign of life for ``stall_seconds`` cannot be stopped that way: the step never
returns. Then the heartbeat ends the job as ``timeout`` itself and exits the process, which the
supervisor (``skipstep up``, Docker, Kubernetes) restarts with a fresh model.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from core.contract.jobs import JobStatus
from core.db import session_scope
from core.jobs import transitions, workers
from worker import dispatcher
from worker.active import ActiveJob, HandedBack, JobTimedOut, LeaseLost
from worker.app import enqueue_delivery

if TYPE_CHECKING:
    from worker.runner import JobRunner

log = logging.getLogger("skipstep.worker")

# The exit status of a worker that killed itself over a job it could not stop.
EXIT_STALLED = 75


class Heartbeat(threading.Thread):
    def __init__(self, runner: JobRunner) -> None:
        super().__init__(name="skipstep-heartbeat", daemon=True)
        self.runner = runner
        self.settings = runner.settings
        self._stop_event = threading.Event()
        self._draining = False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed; retrying at the next beat")

    def beat(self) -> None:
        runner = self.runner
        with session_scope(self.settings.database) as session:
            if workers.seen(session, runner.worker_id, self.state()):
                log.warning("worker %s: answering again after it was marked gone; live again", runner.worker_id)
            if runner.shutdown_requested_at is not None and not self._draining:
                workers.draining(session, runner.worker_id)
                self._draining = True
        active = runner.active
        if active is not None:
            self.watch(active)
        dispatcher.sweep(self.settings)

    def state(self) -> str | None:
        """What the worker's row says of it while it runs: warming up, draining, or taking jobs (None)."""
        if self.runner.shutdown_requested_at is not None:
            return workers.DRAINING
        return workers.WARMING if self.runner.warming else None

    def watch(self, active: ActiveJob) -> None:
        runner, settings, now = self.runner, self.settings, time.monotonic()
        if now - active.last_sign > settings.stall_seconds:
            self.end_stalled(active, now - active.last_sign)
            return
        with session_scope(settings.database) as session:
            renewal = transitions.check_in(session, active.job.id, runner.worker_id, active.job.attempts, runner.lease)
        if active.stop is not None:
            return
        if renewal is None:
            active.stop = LeaseLost("another worker holds the job")
        elif now - active.started > settings.max_job_seconds:
            active.stop = JobTimedOut(
                f"the job ran longer than {settings.max_job_seconds:g} s (SKIPSTEP_MAX_JOB_SECONDS)"
            )
            log.warning("job %s: over its time limit; stopping it at the next step", active.job.id)
        elif (
            runner.shutdown_requested_at is not None
            and now - runner.shutdown_requested_at > settings.shutdown_grace_seconds
        ):
            active.stop = HandedBack()
            log.warning("job %s: the shutdown grace period is over; handing it back at the next step", active.job.id)

    def end_stalled(self, active: ActiveJob, silent: float) -> None:
        runner, settings = self.runner, self.settings
        message = f"the job made no progress for {silent:.0f} s (SKIPSTEP_STALL_SECONDS); its worker was restarted"
        with session_scope(settings.database) as session:
            ended = transitions.finish(
                session,
                active.job.id,
                runner.worker_id,
                active.job.attempts,
                JobStatus.failed,
                settings.public_url,
                error_code=transitions.TIMEOUT,
                error_message=message,
            )
        if ended is None:
            return  # the job ended meanwhile: the worker is not stuck
        enqueue_delivery(ended.delivery)
        log.error(
            "job %s: no progress for %.0f s; failed as timeout, restarting worker %s",
            active.job.id,
            silent,
            runner.worker_id,
        )
        logging.shutdown()
        os._exit(EXIT_STALLED)
