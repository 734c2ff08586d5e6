"""Verify that a webhook request came from skipstep (Standard Webhooks signatures)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The event (``{"type", "timestamp", "data": <the job>}``) if ``body`` is signed with ``secret`` (the API
    key's ``whsec_`` secret) and recent; raises ``WebhookVerificationError`` otherwise. Pass the raw body,
    not re-serialized JSON. Dedupe on ``headers["webhook-id"]``: a retried event keeps its id."""
    return Webhook(secret).verify(body, dict(headers))
