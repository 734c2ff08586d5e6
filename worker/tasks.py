"""Celery tasks. Each worker process builds one JobRunner (and loads the model) when it starts."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from celery.signals import worker_process_init, worker_process_shutdown

from core.settings import get_settings
from worker.app import GENERATE_QUEUE, RUN_JOB, celery_app, consumes

if TYPE_CHECKING:
    from worker.runner import JobRunner

_runner: JobRunner | None = None


def runner() -> JobRunner:
    global _runner
    if _runner is None:
        # Imported here: the webhooks worker loads this module too, and needs neither torch nor the model.
        from worker.runner import JobRunner

        _runner = JobRunner(get_settings())
    return _runner


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    if consumes(GENERATE_QUEUE):  # the webhooks worker shares this app but runs no model
        runner()


@worker_process_shutdown.connect
def _unregister(**_: Any) -> None:
    if _runner is not None:
        _runner.close()


@celery_app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    runner().run(uuid.UUID(job_id))
