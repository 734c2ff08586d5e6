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
from core.db import DeliveryStatus, WebhookAttempt, WebhookDelivery
from core.jobs import repository
from core.keys import rotate_webhook_secret
from core.webhooks.events import history, resend
from worker.app import enqueue_delivery

router = APIRouter(tags=["webhooks"])

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job (or delivery) for this API key."}}


class AttemptView(BaseModel):
    number: int
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null if no response came.")
    error: str | None = Field(description="Why no response came (timeout, refused address, ...).")
    duration_ms: float
    outcome: str = Field(description="delivered, retry, failed or gone (the receiver answered 410).")
    reason: str
    next_attempt_at: datetime | None


class DeliveryView(BaseModel):
    id: uuid.UUID
    event_type: str
    webhook_id: str = Field(description="The webhook-id header; a resend keeps it, so receivers can dedupe.")
    url: str
    status: DeliveryStatus
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    resend_of: uuid.UUID | None
    attempts: list[AttemptView]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]


class RotatedSecret(BaseModel):
    webhook_secret: str = Field(description="Shown only now: deliveries are signed with it from now on.")
    previous_secret_expires_at: datetime = Field(description="Until then deliveries also carry the old signature.")


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
    secret = rotate_webhook_secret(session, key, timedelta(hours=grace_hours))
    expires = key.previous_webhook_secret_expires_at
    session.commit()
    return RotatedSecret(webhook_secret=secret, previous_secret_expires_at=expires)
