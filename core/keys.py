"""API keys: created once (the raw key is shown only then), stored hashed, looked up by hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import ApiKey, utcnow
from core.webhooks.signing import new_secret

KEY_PREFIX = "sk_"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_key(session: Session, name: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """A new key row and the raw key, which is not stored and cannot be recovered."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, key_hash=hash_key(raw), is_admin=is_admin, webhook_secret=new_secret())
    session.add(key)
    session.flush()
    return key, raw


def authenticate(session: Session, raw_key: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw_key)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def rotate_webhook_secret(session: Session, key: ApiKey, grace: timedelta) -> str:
    """A new signing secret; the old one keeps signing alongside it until the grace period ends."""
    key.previous_webhook_secret = key.webhook_secret
    key.previous_webhook_secret_expires_at = utcnow() + grace
    key.webhook_secret = new_secret()
    session.flush()
    return key.webhook_secret
