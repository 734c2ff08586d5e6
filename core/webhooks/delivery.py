"""Making delivery attempts: claim a due delivery, sign and post it, record the attempt, then schedule the
next one or finish. Claims are guarded UPDATEs, so two workers given the same delivery send it once."""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import httpx
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from core.db import ApiKey, DeliveryStatus, Job, WebhookAttempt, WebhookDelivery, session_scope, utcnow
from core.settings import Settings
from core.webhooks import slots
from core.webhooks.retry import Decision, Verdict, decide
from core.webhooks.signing import headers, signing_secrets
from core.webhooks.transport import AttemptOutcome, deliver

log = logging.getLogger("skipstep.webhooks")

# A due delivery whose task was sent this long ago without being claimed has lost its message: send it again.
REDISPATCH_AFTER = timedelta(seconds=30)
SWEEP_BATCH = 100
# A delivery whose receiver or API key already has its most attempts in flight waits this long before it is sent
# again; no attempt is counted.
BUSY_DELAY = timedelta(seconds=1)
STATUS_AFTER = {
    Verdict.DELIVERED: DeliveryStatus.succeeded,
    Verdict.RETRY: DeliveryStatus.pending,
    Verdict.FAILED: DeliveryStatus.failed,
    Verdict.GONE: DeliveryStatus.gone,
}


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    number: int  # of this attempt, from 1
    url: str
    event_id: str
    body: bytes
    secrets: tuple[str, ...]


def _due(now: datetime) -> Any:
    # A delivering row is due again once its attempt's lease has lapsed: that worker died mid-attempt.
    statuses = (DeliveryStatus.pending, DeliveryStatus.delivering)
    return and_(WebhookDelivery.status.in_(statuses), WebhookDelivery.next_attempt_at <= now)


def take_due(session: Session) -> list[uuid.UUID]:
    """Due deliveries with no task sent for their current attempt, marked as sent; the caller sends them."""
    now = utcnow()
    unsent = or_(
        WebhookDelivery.dispatched_at.is_(None),
        WebhookDelivery.dispatched_at < WebhookDelivery.next_attempt_at,
        WebhookDelivery.dispatched_at < now - REDISPATCH_AFTER,
    )
    # Round robin across API keys (each key's first due delivery, then each key's second, ...), so that one key's
    # backlog of deferred or retried deliveries cannot fill the batch while another key's wait.
    turn = func.row_number().over(partition_by=Job.owner_id, order_by=WebhookDelivery.next_attempt_at)
    due = (
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at, turn.label("turn"))
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(_due(now), unsent)
        .subquery()
    )
    query = select(due.c.id).order_by(due.c.turn, due.c.next_attempt_at).limit(SWEEP_BATCH)
    candidates = session.scalars(query).all()
    if not candidates:
        return []
    # Re-checked in the UPDATE: of two sweeps racing for a delivery, one sends it.
    taken = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(candidates), _due(now), unsent)
        .values(dispatched_at=now)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    return list(taken.scalars())


def claim(session: Session, delivery_id: uuid.UUID, lease: timedelta) -> Claimed | None:
    """Take a due delivery for one attempt; None if it is not due or another worker holds it."""
    now = utcnow()
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, _due(now))
        .values(
            status=DeliveryStatus.delivering,
            attempts=WebhookDelivery.attempts + 1,
            next_attempt_at=now + lease,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    delivery = session.get_one(WebhookDelivery, delivery_id, populate_existing=True)
    owner = session.execute(
        select(ApiKey).join(Job, Job.owner_id == ApiKey.id).where(Job.id == delivery.job_id)
    ).scalar_one()
    return Claimed(
        id=delivery.id,
        number=delivery.attempts,
        url=delivery.url,
        event_id=delivery.event_id,
        body=delivery.body.encode(),
        secrets=tuple(signing_secrets(owner, now)),
    )


def record_attempt(
    session: Session,
    claimed: Claimed,
    attempted_at: datetime,
    outcome: AttemptOutcome,
    decision: Decision,
    scale: float,
) -> None:
    """Write the attempt, and move the delivery on unless its lease lapsed and another worker retook it."""
    now = utcnow()
    next_at = None
    if decision.verdict is Verdict.RETRY:
        next_at = now + timedelta(seconds=(decision.delay_seconds or 0) * scale)
    session.add(
        WebhookAttempt(
            delivery_id=claimed.id,
            number=claimed.number,
            attempted_at=attempted_at,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=round(outcome.duration_seconds * 1000, 3),
            outcome=decision.verdict.value,
            reason=decision.reason,
            next_attempt_at=next_at,
        )
    )
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.id,
            WebhookDelivery.status == DeliveryStatus.delivering,
            WebhookDelivery.attempts == claimed.number,
        )
        .values(
            status=STATUS_AFTER[decision.verdict],
            next_attempt_at=next_at,
            finished_at=None if next_at else now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        log.warning("delivery %s: attempt %d outlasted its lease; it was retaken", claimed.id, claimed.number)


@cache
def tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes tens of milliseconds: once per process, not once per attempt.
    return httpx.create_ssl_context()


def attempt_lease(settings: Settings) -> timedelta:
    # An attempt ends by its deadline (DNS aside): leave ample room before declaring the worker dead.
    return timedelta(seconds=30 + 2 * settings.webhook_deadline)


def defer(session: Session, delivery_id: uuid.UUID, delay: timedelta) -> None:
    """Move a pending, due delivery's next attempt later without counting an attempt (it found no free slot)."""
    now = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.pending,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + delay)
        .execution_options(synchronize_session=False)
    )


def attempt_delivery(settings: Settings, delivery_id: uuid.UUID) -> Decision | None:
    """Make the delivery's next attempt if it is due and both its receiver and its API key have a free slot; the
    decision taken after it, or None if not attempted (a delivery without a slot is deferred a moment)."""
    with session_scope(settings.database) as session:
        found = session.execute(
            select(WebhookDelivery.url, Job.owner_id)
            .join(Job, Job.id == WebhookDelivery.job_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
    if found is None:
        return None
    url, owner_id = found
    lease = attempt_lease(settings)
    caps = settings.webhook_endpoint_concurrency, settings.webhook_key_concurrency
    with slots.slot(settings.broker, url, owner_id, *caps, lease) as free:
        if not free:
            with session_scope(settings.database) as session:
                defer(session, delivery_id, BUSY_DELAY)
            return None
        return _attempt(settings, delivery_id, lease)


def _attempt(settings: Settings, delivery_id: uuid.UUID, lease: timedelta) -> Decision | None:
    with session_scope(settings.database) as session:
        claimed = claim(session, delivery_id, lease)
    if claimed is None:
        return None
    attempted_at = utcnow()
    outcome = deliver(
        claimed.url,
        headers(claimed.secrets, claimed.event_id, int(time.time()), claimed.body),
        claimed.body,
        allow_private=settings.webhook_allow_private,
        connect_timeout=settings.webhook_connect_timeout,
        read_timeout=settings.webhook_read_timeout,
        deadline_seconds=settings.webhook_deadline,
        ssl_context=tls_context(),
    )
    decision = decide(outcome, claimed.number)
    with session_scope(settings.database) as session:
        record_attempt(session, claimed, attempted_at, outcome, decision, settings.webhook_retry_scale)
    log.info("delivery %s: attempt %d: %s (%s)", claimed.id, claimed.number, decision.verdict.value, decision.reason)
    return decision
