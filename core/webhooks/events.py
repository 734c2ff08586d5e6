"""Webhook events of a job, recorded as deliveries in the transaction that changes the job's status,
so that an event is written exactly when its status change is, and sent only after both are committed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.contract import examples
from core.contract.jobs import EventType
from core.db import DeliveryStatus, Job, WebhookAttempt, WebhookDelivery, utcnow
from core.jobs.view import JobView, job_view


class WebhookEvent(BaseModel):
    """The request body (Standard Webhooks envelope): `data` is the job as GET /jobs/{id} showed it then."""

    type: EventType = Field(description="What happened; the same as the webhook's name.", examples=["job.succeeded"])
    timestamp: datetime = Field(description="When it happened.", examples=[examples.FINISHED_AT])
    data: JobView = Field(description="The job as `GET /jobs/{id}` showed it then.")


@dataclass(frozen=True)
class DeliveryHistory:
    delivery: WebhookDelivery
    attempts: Sequence[WebhookAttempt]


def record_event(session: Session, job: Job, event_type: EventType, public_url: str) -> uuid.UUID | None:
    """Adds a delivery of the event to the caller's transaction; the caller sends its id to the webhooks
    queue once committed. None if the job does not subscribe to the event or has already recorded it
    (a job taken over after its worker died is claimed again, but starts only once)."""
    if job.webhook_url is None or event_type not in job.webhook_events:
        return None
    recorded = select(WebhookDelivery.id).where(
        WebhookDelivery.job_id == job.id, WebhookDelivery.event_type == event_type
    )
    if session.scalar(recorded.limit(1)) is not None:
        return None
    # Callers change the job with bulk UPDATEs, which leave loaded objects as they were.
    session.refresh(job)
    now = utcnow()
    body = WebhookEvent(type=event_type, timestamp=now, data=job_view(job, public_url)).model_dump_json()
    disabled = endpoint_gone(session, job.owner_id, job.webhook_url)
    delivery = WebhookDelivery(
        job_id=job.id,
        event_type=event_type,
        event_id=f"msg_{uuid.uuid4().hex}",
        url=job.webhook_url,
        body=body,
        # Kept, but never sent: the receiver said 410 Gone to this key before (an admin resend still sends it).
        status=DeliveryStatus.gone if disabled else DeliveryStatus.pending,
        next_attempt_at=None if disabled else now,
        dispatched_at=now,
        finished_at=now if disabled else None,
    )
    session.add(delivery)
    session.flush()
    return None if disabled else delivery.id


def endpoint_gone(session: Session, owner_id: uuid.UUID, url: str) -> bool:
    """Whether a receiver at ``url`` answered 410 Gone to one of this key's deliveries (Standard Webhooks:
    410 disables the endpoint). Gone deliveries are few, so the status index keeps this cheap."""
    gone = (
        select(WebhookDelivery.id)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.status == DeliveryStatus.gone, WebhookDelivery.url == url, Job.owner_id == owner_id)
    )
    return session.scalar(gone.limit(1)) is not None


def resend(session: Session, original: WebhookDelivery) -> WebhookDelivery:
    """A new delivery of the same message: same webhook-id and body, so a receiver that got it already can
    drop it (Standard Webhooks keeps the id of a resent message); fresh timestamp and signatures per attempt."""
    now = utcnow()
    delivery = WebhookDelivery(
        job_id=original.job_id,
        event_type=original.event_type,
        event_id=original.event_id,
        url=original.url,
        body=original.body,
        next_attempt_at=now,
        dispatched_at=now,
        resend_of=original.id,
    )
    session.add(delivery)
    session.flush()
    return delivery


def history(session: Session, job_id: uuid.UUID) -> list[DeliveryHistory]:
    """The job's deliveries, oldest first, each with its attempts in order."""
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    deliveries = session.scalars(query.order_by(WebhookDelivery.created_at, WebhookDelivery.id)).all()
    attempts: dict[uuid.UUID, list[WebhookAttempt]] = {delivery.id: [] for delivery in deliveries}
    if deliveries:
        rows = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(attempts))
        for attempt in session.scalars(rows.order_by(WebhookAttempt.number)):
            attempts[attempt.delivery_id].append(attempt)
    return [DeliveryHistory(delivery, attempts[delivery.id]) for delivery in deliveries]
