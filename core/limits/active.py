"""Jobs an API key has in flight (queued or running), and the cap on them, held under concurrent submits."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db import ApiKey, QueueCount
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
    already has as many jobs in flight as it may. A no-op UPDATE of the key's row comes first: PostgreSQL locks
    the row and SQLite the database until the submit commits or rolls back, so concurrent submits of one key
    count one after another and never both take the last place (a count alone would, being check-then-insert). The
    count is the key's row per model in ``queue_counts``, which the insert's trigger updates in the same transaction."""
    cap = cap_for(key, settings)
    if cap <= 0:
        return
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id)
        .values(max_active_jobs=ApiKey.max_active_jobs)
        .execution_options(synchronize_session=False)
    )
    active = session.scalar(
        select(func.sum(QueueCount.queued + QueueCount.running)).where(QueueCount.owner_id == key.id)
    )
    if (active or 0) >= cap:
        session.rollback()
        raise LimitReached(
            f"max_active_jobs: this API key already has {cap} queued or running jobs, the most it may; "
            "submit again once some have finished",
            retry_after=RETRY_AFTER_SECONDS,
        )
