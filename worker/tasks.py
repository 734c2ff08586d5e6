"""Celery tasks and the GPU worker's life: a worker consuming a model's queue (``generate.<model>``)
loads that model once when it starts and runs one job at a time in its main process."""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

from core.settings import get_settings
from worker.app import RUN_JOB, celery_app, served_model

if TYPE_CHECKING:
    from worker.runner import JobRunner

log = logging.getLogger("skipstep.worker")
_runner: JobRunner | None = None
# The exit status of a GPU worker that could not load its model, reach its store or register.
EXIT_CANNOT_START = 78


def runner() -> JobRunner:
    if _runner is None:
        raise RuntimeError("this worker runs no model: start it on a model's queue (skipstep worker --model NAME)")
    return _runner


@worker_init.connect
def _one_process(sender: Any, **_: Any) -> None:
    if served_model() is not None:
        # The solo pool: jobs run in this process, where the model is loaded, so nothing forks after CUDA is
        # initialised and no pool process can be killed while it loads; SIGTERM reaches the job's process.
        sender.pool_cls, sender.concurrency = "solo", 1


@worker_ready.connect
def _load_model(**_: Any) -> None:
    global _runner
    model = served_model()
    if model is not None:
        # Imported here: the webhooks worker loads this module too, and needs neither torch nor the model.
        from worker.runner import JobRunner

        try:
            _runner = JobRunner(get_settings(), model)
        except Exception:
            # Celery would log this and go on consuming with no model: exit instead, for the supervisor
            # (skipstep up, Docker, Kubernetes) to start the worker again.
            log.exception("worker for model %s could not start", model)
            logging.shutdown()
            os._exit(EXIT_CANNOT_START)


@worker_shutting_down.connect
def _begin_shutdown(**_: Any) -> None:
    if _runner is not None:
        _runner.begin_shutdown()


@worker_shutdown.connect
def _unregister(**_: Any) -> None:
    if _runner is not None:
        _runner.close()


@celery_app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    runner().run(uuid.UUID(job_id))
