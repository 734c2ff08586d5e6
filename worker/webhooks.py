"""The webhooks worker: delivery tasks on their own queue, and a sweep that sends deliveries as they come due
(retries are scheduled in the database, not as broker ETAs, which Redis redelivers after its visibility timeout)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from celery.signals import worker_ready

from core.db import session_scope
from core.settings import Settings, get_settings
from core.webhooks.delivery import attempt_delivery, take_due
from worker.app import DELIVER_WEBHOOK, WEBHOOKS_QUEUE, celery_app, consumed_queues, enqueue_delivery

log = logging.getLogger("skipstep.webhooks")


def sweep_forever(settings: Settings) -> None:
    while True:
        time.sleep(settings.webhook_sweep_seconds)
        try:
            with session_scope(settings.database) as session:
                due = take_due(session)
            for delivery_id in due:
                enqueue_delivery(delivery_id)
        except Exception:
            log.exception("webhook sweep failed; retrying")


@worker_ready.connect
def _start_sweep(**_: Any) -> None:
    # In the worker's main process: the webhooks worker runs a threads pool (attempts wait on the network).
    if WEBHOOKS_QUEUE in consumed_queues():
        threading.Thread(
            target=sweep_forever, args=(get_settings(),), name="skipstep-webhook-sweep", daemon=True
        ).start()


@celery_app.task(name=DELIVER_WEBHOOK)
def deliver_webhook(delivery_id: str) -> None:
    attempt_delivery(get_settings(), uuid.UUID(delivery_id))
