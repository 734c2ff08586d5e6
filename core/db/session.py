"""Engines and sessions. One engine per process and URL."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.db import redact
from core.settings import get_settings

T = TypeVar("T")
log = logging.getLogger("skipstep.db")
# What a database that is briefly unreachable (restarting, failing over, a dropped connection) raises.
UNREACHABLE = (OperationalError, InterfaceError)
PING_AFTER_IDLE_SECONDS = 1.0


@lru_cache
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        redact.install(engine)
        return engine
    # Bound parameters (prompts, key hashes) never appear in error messages or logs: neither in SQLAlchemy's text
    # (hide_parameters) nor in the database's own message (core.db.redact).
    pool_size = get_settings().database_pool_size
    engine = create_engine(url, hide_parameters=True, pool_size=pool_size, max_overflow=pool_size)
    _ping_when_idle(engine)
    redact.install(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection (one round trip) before use only if it sat idle ``PING_AFTER_IDLE_SECONDS``; one
    handed back moments ago is taken as it is. SQLAlchemy's ``pool_pre_ping`` pinged at every checkout, a round trip
    per transaction. After a database restart every pooled connection has been idle, so each is pinged and replaced;
    a connection that fails in use makes SQLAlchemy discard the pool's older connections."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("returned_at", 0.0) < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool replaces the connection and checks out again.
            raise DisconnectionError() from exc


@lru_cache
def sessions(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with sessions(url)() as session, session.begin():
        yield session


def retrying(work: Callable[[], T], deadline: float, what: str) -> T:
    """Run ``work`` (which opens its own session) again through a database outage, with backoff, until
    ``deadline`` (a ``time.monotonic()`` value); then the last error is raised."""
    delay = 0.2
    while True:
        try:
            return work()
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: the database is unreachable (%s); retrying in %.1f s", what, exc.__class__.__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
