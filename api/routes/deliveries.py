"""Webhooks over HTTP: a job's deliveries with every attempt, an admin's resend, and signing secret rotation."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import AdminDep, KeyDep, SessionDep
from api.errors import ApiError, ErrorResponse
from core.contract import examples
from core.db import DeliveryStatus, WebhookAttempt, WebhookDelivery
from core.jobs import repository
from core.keys import rotate_webhook_secret
from core.webhooks.events import history, resend
from worker.app import enqueue_delivery

router = APIRouter(tags=["webhooks"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job (or delivery) for this API key."}}


class AttemptView(BaseModel):
    number: int = Field(description="1 for the delivery's first attempt.", examples=[1])
    attempted_at: datetime = Field(description="When the request was sent.", examples=["2025-06-01T12:01:18Z"])
    status_code: int | None = Field(description="The receiver's HTTP status; null if no response came.", examples=[200])
    error: str | None = Field(
        description="Why no response came (timeout, refused address, ...); null when one came.",
        examples=["no complete response within the 15 s deadline"],
    )
    duration_ms: float = Field(description="Milliseconds from sending to the response (or giving up).", examples=[84.3])
    outcome: str = Field(
        description="delivered, retry, failed or gone (the receiver answered 410).", examples=["delivered"]
    )
    reason: str = Field(description="Why that outcome, for people.", examples=["HTTP 200"])
    next_attempt_at: datetime | None = Field(
        description="When the next attempt is due after a `retry`; null otherwise.", examples=["2025-06-01T12:01:23Z"]
    )


class DeliveryView(BaseModel):
    id: uuid.UUID = Field(description="The delivery's id.", examples=[examples.DELIVERY_ID])
    event_type: str = Field(description="The event it carries.", examples=["job.succeeded"])
    webhook_id: str = Field(
        description="The webhook-id header; a resend keeps it, so receivers can dedupe.", examples=[examples.WEBHOOK_ID]
    )
    url: str = Field(description="Where it is sent: the job's webhook_url.", examples=[examples.WEBHOOK_URL])
    status: DeliveryStatus = Field(
        description="pending, delivering (an attempt in flight), then succeeded, failed or gone (410).",
        examples=["succeeded"],
    )
    next_attempt_at: datetime | None = Field(
        description="When it is next attempted while pending or delivering; null once finished.",
        examples=["2025-06-01T12:01:23Z"],
    )
    created_at: datetime = Field(description="When the event was recorded.", examples=[examples.FINISHED_AT])
    finished_at: datetime | None = Field(
        description="When it reached its final status; null before.", examples=["2025-06-01T12:01:18Z"]
    )
    resend_of: uuid.UUID | None = Field(
        description="The delivery an admin resent as this one; null for the first.",
        examples=["c4e1a9d2-7b3f-4e8a-9c05-1d2e3f4a5b6c"],
    )
    attempts: list[AttemptView] = Field(description="Its attempts, oldest first.")


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView] = Field(description="The job's deliveries, oldest first.")


class RotatedSecret(BaseModel):
    webhook_secret: str = Field(
        description="Shown only now: deliveries are signed with it from now on.",
        examples=["whsec_igAvAHWcJ5yaAWJ7ZpcTxbszwbXLimvFOcEbKHuYn2s="],
    )
    previous_secret_expires_at: datetime = Field(
        description="Until then deliveries also carry the old signature.", examples=["2025-06-02T12:00:00Z"]
    )


def _view(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        event_type=delivery.event_type,
        webhook_id=delivery.event_id,
        url=delivery.url,
        status=delivery.status,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
        resend_of=delivery.resend_of,
        attempts=[AttemptView.model_validate(attempt, from_attributes=True) for attempt in attempts],
    )


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveryList, responses=NOT_FOUND)
def list_deliveries(job_id: uuid.UUID, key: KeyDep, session: SessionDep) -> Any:
    """The job's webhook deliveries, oldest first, each with its attempts."""
    if repository.get(session, job_id, key) is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return DeliveryList(deliveries=[_view(h.delivery, list(h.attempts)) for h in history(session, job_id)])


@router.post(
    "/admin/jobs/{job_id}/deliveries/{delivery_id}/resend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryView,
    responses=NOT_FOUND | {409: {"model": ErrorResponse, "description": "The delivery is still being attempted."}},
)
def resend_delivery(job_id: uuid.UUID, delivery_id: uuid.UUID, _admin: AdminDep, session: SessionDep) -> Any:
    """Send a delivery's message again as a new delivery with the same webhook-id and body."""
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.job_id == job_id)
    original = session.scalar(query)
    if original is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"delivery {delivery_id} of job {job_id} not found")
    if not original.status.finished:
        raise ApiError(status.HTTP_409_CONFLICT, f"delivery {delivery_id} is still {original.status.value}")
    delivery = resend(session, original)
    session.commit()
    enqueue_delivery(delivery.id)
    return _view(delivery, [])


@router.post("/keys/me/webhook-secret/rotate", response_model=RotatedSecret)
def rotate_secret(
    key: KeyDep,
    session: SessionDep,
    grace_hours: Annotated[float, Query(ge=0, le=24 * 30, description="How long the old secret still signs.")] = 24,
) -> Any:
    """A new webhook signing secret for the calling key; both secrets sign deliveries until the grace ends."""
    row = rotate_webhook_secret(session, key, timedelta(hours=grace_hours))
    session.commit()
    return RotatedSecret(
        webhook_secret=row.webhook_secret, previous_secret_expires_at=row.previous_webhook_secret_expires_at
    )
