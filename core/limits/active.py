"""Jobs an API key has in flight (queued or running), and the cap on them, held under concurrent submits."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.db import ApiKey
from core.errors import LimitReached
from core.settings import Settings

RETRY_AFTER_SECONDS = 10


def cap_for(key: ApiKey, settings: Settings) -> int:
    """The most jobs ``key`` may have queued or running; 0: no cap."""
    if key.is_admin and not settings.limit_admin_keys:
        return 0
    return key.max_active_jobs if key.max_active_jobs is not None else settings.max_active_jobs


def hold_room(session: Session, key: ApiKey, settings: Settings) -> None:
    """Within the submit's transaction, before its insert: LimitReached (the transaction rolled back) if the key
    already has as many jobs in flight as it may. One statement locks the key's row and reads its ``in_flight``, which
    the triggers on ``jobs`` keep: PostgreSQL returns the row as the last submit to commit left it (an ``UPDATE`` that
    waited for a lock re-reads the row), and SQLite holds the database. Concurrent submits of one key so count one
    after another and never both take the last place, as a count and then an insert would."""
    cap = cap_for(key, settings)
    if cap <= 0:
        return
    in_flight = session.scalar(
        update(ApiKey)
        .where(ApiKey.id == key.id)
        .values(in_flight=ApiKey.in_flight)
        .returning(ApiKey.in_flight)
        .execution_options(synchronize_session=False)
    )
    if (in_flight or 0) >= cap:
        session.rollback()
        raise LimitReached(
            f"max_active_jobs: this API key already has {cap} queued or running jobs, the most it may; "
            "submit again once some have finished",
            retry_after=RETRY_AFTER_SECONDS,
        )
