from core.db.models import (
    AdminSession,
    ApiKey,
    Base,
    DeliveryStatus,
    Job,
    JobRun,
    JobStatus,
    KeyTurn,
    WebhookAttempt,
    WebhookDelivery,
    Worker,
    utcnow,
)
from core.db.session import engine_for, session_scope, sessions

__all__ = [
    "AdminSession",
    "ApiKey",
    "Base",
    "DeliveryStatus",
    "Job",
    "JobRun",
    "JobStatus",
    "KeyTurn",
    "WebhookAttempt",
    "WebhookDelivery",
    "Worker",
    "engine_for",
    "session_scope",
    "sessions",
    "utcnow",
]
