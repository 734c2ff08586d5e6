"""Sending jobs to their models' queues, as the database orders them (core.jobs.dispatch), and the
sweep that recovers from crashed workers and lost messages. Runs in the API after a submit and in
every GPU worker (after each job, at start and on every heartbeat); all of it is safe to run anywhere
at once."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from core.db import session_scope
from core.jobs import dispatch as queue
from core.jobs import transitions, workers
from core.settings import Settings
from worker.app import enqueue_delivery, enqueue_job

log = logging.getLogger("skipstep.dispatch")


def dispatch(settings: Settings, models: Iterable[str] | None = None) -> int:
    """Send each model's next jobs to its queue (every model with queued jobs if none is named);
    how many were sent. A job whose message cannot be sent stays queued and unsent for the next try."""
    if models is None:
        with session_scope(settings.database) as session:
            models = queue.waiting_models(session)
    sent = 0
    for model in models:
        with session_scope(settings.database) as session:
            job_ids = queue.take_next(session, model, settings.heartbeat_seconds)
        unsent = []
        for job_id in job_ids:
            try:
                enqueue_job(job_id, model)
                sent += 1
            except Exception:
                unsent.append(job_id)
        if unsent:
            log.warning("%d job(s) of %s could not be sent to the broker now; they stay queued", len(unsent), model)
            with session_scope(settings.database) as session:
                queue.undispatch(session, unsent)
    return sent


def sweep(settings: Settings) -> None:
    """Mark silent workers gone, take back jobs whose lease lapsed, send again what was sent but never
    claimed, then dispatch."""
    with session_scope(settings.database) as session:
        gone = workers.mark_gone(session, settings.heartbeat_seconds)
    for worker_id, hostname, pid in gone:
        log.warning("worker %s (host %s, pid %d) stopped answering; marked gone", worker_id, hostname, pid)
    with session_scope(settings.database) as session:
        swept = transitions.requeue_lapsed(session, settings.max_job_attempts, settings.public_url)
    for job_id, model, worker_id in swept.requeued:
        log.warning("job %s (%s): worker %s stopped renewing its lease; requeued", job_id, model, worker_id)
    for job_id, status, worker_id in swept.ended:
        log.warning("job %s: worker %s stopped renewing its lease; job %s", job_id, worker_id, status.value)
    for delivery_id in swept.deliveries:
        enqueue_delivery(delivery_id)
    with session_scope(settings.database) as session:
        stale = queue.reset_stale(session, timedelta(seconds=settings.redispatch_seconds))
    if stale:
        log.warning(
            "%d queued job(s) sent over %g s ago were never claimed; sending again", stale, settings.redispatch_seconds
        )
    dispatch(settings)
