"""Whether the service's dependencies answer. Without the database nothing can be accepted: it decides
readiness. The broker and the storage are only reported: a submit commits its job to the database without
them, and the job runs once they are back. Each check says ``ok``, ``unreachable`` or ``not configured``; why
one is unreachable goes to the log only (it may name servers and addresses)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.storage import Storage, StorageError

log = logging.getLogger("skipstep.health")

OK = "ok"
UNREACHABLE = "unreachable"
NOT_CONFIGURED = "not configured"
# How long a report waits for the broker and storage checks: a probe must answer quickly however they fail
# (a blackholed S3 endpoint takes its client's connect timeout, times its retries).
REPORT_SECONDS = 2.0

_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
_running: dict[tuple[str, int | str | None], Future[str]] = {}
_lock = threading.Lock()


def report(session: Session, broker_url: str | None, store: Storage) -> dict[str, str]:
    """database, broker and storage, each ``ok``, ``unreachable`` or ``not configured``. The broker and the
    storage are checked alongside the database, for at most REPORT_SECONDS: one still unanswered then counts as
    unreachable, and is not checked again until that check ends."""
    pending = {
        "broker": _started(("broker", broker_url), lambda: broker(broker_url)),
        "storage": _started(("storage", id(store)), lambda: storage(store)),
    }
    checks = {"database": database(session)}
    deadline = time.monotonic() + REPORT_SECONDS
    for name, future in pending.items():
        try:
            checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            log.warning("health: %s did not answer within %.0f s", name, REPORT_SECONDS)
            checks[name] = UNREACHABLE
    return checks


def _started(key: tuple[str, int | str | None], check: Callable[[], str]) -> Future[str]:
    with _lock:
        running = _running.get(key)
        if running is None or running.done():
            running = _running[key] = _checks.submit(check)
        return running


def database(session: Session) -> str:
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health: database unreachable: %s", exc.__class__.__name__)
        session.rollback()  # the failed probe leaves the request's session nothing to commit
        return UNREACHABLE
    return OK


def broker(url: str | None) -> str:
    if url is None:
        return NOT_CONFIGURED
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        log.warning("health: broker unreachable: %s", exc)
        return UNREACHABLE
    return OK


def storage(store: Storage) -> str:
    try:
        store.check()
    except StorageError as exc:
        log.warning("health: storage unreachable: %s", exc)
        return UNREACHABLE
    return OK
