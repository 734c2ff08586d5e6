"""Celery tasks. Each worker process builds one JobRunner (and loads the model) when it starts."""

from __future__ import annotations

import uuid
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from core.settings import get_settings
from worker.app import RUN_JOB, celery_app
from worker.runner import JobRunner

_runner: JobRunner | None = None


def runner() -> JobRunner:
    global _runner
    if _runner is None:
        _runner = JobRunner(get_settings())
    return _runner


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    runner()


@worker_process_shutdown.connect
def _unregister(**_: Any) -> None:
    if _runner is not None:
        _runner.close()


@celery_app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    runner().run(uuid.UUID(job_id))
