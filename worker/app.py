"""The Celery app. Importing it loads no model: the API imports it to send jobs."""

from __future__ import annotations

import logging
import uuid

from celery import Celery

from core.settings import Settings, get_settings

GENERATE_PREFIX = "generate."
RUN_JOB = "skipstep.run_job"
WEBHOOKS_QUEUE = "webhooks"
DELIVER_WEBHOOK = "skipstep.deliver_webhook"

log = logging.getLogger("skipstep.worker")


def create_celery(settings: Settings) -> Celery:
    app = Celery(
        "skipstep",
        broker=settings.broker,
        include=["worker.tasks", "worker.webhooks", "worker.retention"],
    )
    # A message not acknowledged within the visibility timeout is delivered again; with acks_late that
    # is the whole job, so the timeout must outlast the longest job (celery issues 5935, 5306, 7651).
    transport = {"visibility_timeout": int(settings.max_job_seconds) + 600}
    app.conf.update(
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # Publishing gives up quickly: a job whose message could not be sent stays queued in the
        # database and a worker's sweep sends it later.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=WEBHOOKS_QUEUE,
        task_routes={DELIVER_WEBHOOK: {"queue": WEBHOOKS_QUEUE}},
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


celery_app = create_celery(get_settings())


def generate_queue(model: str) -> str:
    """Each model has its own queue; its GPU workers consume only that one."""
    return GENERATE_PREFIX + model


def enqueue_job(job_id: object, model: str) -> None:
    """Send a job's id to its model's queue; the row, already committed, carries everything else."""
    celery_app.send_task(RUN_JOB, args=[str(job_id)], queue=generate_queue(model))


def enqueue_delivery(delivery_id: uuid.UUID | None) -> None:
    """Send a webhook delivery to the webhooks queue; a failed send is only logged, as the sweep sends it later."""
    if delivery_id is None:
        return
    try:
        celery_app.send_task(DELIVER_WEBHOOK, args=[str(delivery_id)], queue=WEBHOOKS_QUEUE)
    except Exception:
        log.warning("webhook delivery %s could not be queued now; the webhooks sweep will send it", delivery_id)


def consumed_queues() -> list[str]:
    """The queues this worker process takes tasks from (its -Q option)."""
    return list(celery_app.amqp.queues.consume_from)


def served_model() -> str | None:
    """The model whose queue this worker consumes; None for a worker that runs no model (webhooks)."""
    models = [queue.removeprefix(GENERATE_PREFIX) for queue in consumed_queues() if queue.startswith(GENERATE_PREFIX)]
    if len(models) > 1:
        raise RuntimeError(f"a GPU worker serves one model; this one consumes {', '.join(consumed_queues())}")
    return models[0] if models else None
