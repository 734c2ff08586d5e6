"""Dashboard sessions: the cookie holds a random token, the database only its hash, so that neither the
cookie nor the table ever carries an API key. Sessions expire and can be revoked one by one."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db import AdminSession, ApiKey, utcnow
from core.keys import hash_key


def open_session(session: Session, key: ApiKey, lifetime: timedelta, user_agent: str | None) -> str:
    """A new session for an admin key; returns the raw token for the cookie (not stored)."""
    token = secrets.token_urlsafe(32)
    session.add(
        AdminSession(
            token_hash=hash_key(token),
            key_id=key.id,
            expires_at=utcnow() + lifetime,
            user_agent=(user_agent or "")[:200] or None,
        )
    )
    session.flush()
    return token


def key_for(session: Session, token: str) -> ApiKey | None:
    """The admin key behind a live session token; None if unknown, expired, revoked, or the key is."""
    row = session.execute(
        select(ApiKey)
        .join(AdminSession, AdminSession.key_id == ApiKey.id)
        .where(
            AdminSession.token_hash == hash_key(token),
            AdminSession.revoked_at.is_(None),
            AdminSession.expires_at > utcnow(),
        )
    ).scalar_one_or_none()
    return row if row is not None and row.revoked_at is None and row.is_admin else None


def revoke_token(session: Session, token: str) -> None:
    session.execute(
        update(AdminSession)
        .where(AdminSession.token_hash == hash_key(token), AdminSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def revoke(session: Session, session_id: uuid.UUID) -> bool:
    """Ends a session; False if there is no live session with that id."""
    result = session.execute(
        update(AdminSession)
        .where(AdminSession.id == session_id, AdminSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount == 1


def live(session: Session) -> Sequence[tuple[AdminSession, str]]:
    """Sessions neither expired nor revoked, newest first, with their key's name."""
    rows = session.execute(
        select(AdminSession, ApiKey.name)
        .join(ApiKey, ApiKey.id == AdminSession.key_id)
        .where(AdminSession.revoked_at.is_(None), AdminSession.expires_at > utcnow())
        .order_by(AdminSession.created_at.desc())
    ).all()
    return [(row, name) for row, name in rows]
