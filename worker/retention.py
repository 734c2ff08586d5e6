"""The retention sweep, in the webhooks worker (always running, holds no model): deletes the stored objects of
jobs past their ``expires_at`` (core.jobs.retention), every SKIPSTEP_RETENTION_SWEEP_SECONDS."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready

from core.jobs import retention
from core.settings import Settings, get_settings
from core.storage import storage_from
from worker.app import WEBHOOKS_QUEUE, consumed_queues

log = logging.getLogger("skipstep.retention")


def sweep_forever(settings: Settings) -> None:
    storage = storage_from(settings)
    while True:
        time.sleep(settings.retention_sweep_seconds)
        try:
            expired = retention.sweep(settings.database, storage)
            if expired:
                log.info("deleted the stored objects of %d expired job(s)", expired)
        except Exception:
            log.exception("retention sweep failed; retrying")


@worker_ready.connect
def _start_sweep(**_: Any) -> None:
    if WEBHOOKS_QUEUE in consumed_queues():
        threading.Thread(
            target=sweep_forever, args=(get_settings(),), name="skipstep-retention-sweep", daemon=True
        ).start()
