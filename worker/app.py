"""The Celery app. Importing it loads no model: the API imports it to send jobs."""

from __future__ import annotations

import logging
import uuid

from celery import Celery

from core.settings import Settings, get_settings

GENERATE_QUEUE = "generate"
RUN_JOB = "skipstep.run_job"
WEBHOOKS_QUEUE = "webhooks"
DELIVER_WEBHOOK = "skipstep.deliver_webhook"

log = logging.getLogger("skipstep.worker")


def create_celery(settings: Settings) -> Celery:
    app = Celery(
        "skipstep",
        broker=settings.broker_url or "redis://127.0.0.1:6379/0",
        include=["worker.tasks", "worker.webhooks"],
    )
    # A message not acknowledged within the visibility timeout is delivered again; with acks_late that
    # is the whole job, so the timeout must outlast the longest job (celery issues 5935, 5306, 7651).
    transport = {"visibility_timeout": settings.max_job_seconds + 600}
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
        task_default_queue=GENERATE_QUEUE,
        task_routes={RUN_JOB: {"queue": GENERATE_QUEUE}, DELIVER_WEBHOOK: {"queue": WEBHOOKS_QUEUE}},
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # The pipeline loads in worker_process_init, which Celery kills after this many seconds.
        worker_proc_alive_timeout=600,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


celery_app = create_celery(get_settings())


def enqueue_job(job_id: object) -> None:
    """Send a job's id to the GPU queue; the row, already committed, carries everything else."""
    celery_app.send_task(RUN_JOB, args=[str(job_id)], queue=GENERATE_QUEUE)


def enqueue_delivery(delivery_id: uuid.UUID | None) -> None:
    """Send a webhook delivery to the webhooks queue; a failed send is only logged, as the sweep sends it later."""
    if delivery_id is None:
        return
    try:
        celery_app.send_task(DELIVER_WEBHOOK, args=[str(delivery_id)], queue=WEBHOOKS_QUEUE)
    except Exception:
        log.warning("webhook delivery %s could not be queued now; the webhooks sweep will send it", delivery_id)


def consumes(queue: str) -> bool:
    """Whether this worker takes tasks from `queue` (its -Q option; pool processes inherit the selection)."""
    return queue in celery_app.amqp.queues.consume_from
