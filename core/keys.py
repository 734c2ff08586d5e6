"""API keys: created once (the raw key is shown only then), stored hashed, looked up by hash."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from datetime import timedelta

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, make_transient_to_detached

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


class KeyCache:
    """Keys an API process has looked up recently, by hash, each kept ``ttl`` seconds: most requests then need
    no key query. A revoked key, or a change to its row, takes effect within ``ttl``. Only keys that exist
    are kept (a stream of wrong keys cannot fill it), at most ``size`` of them."""

    def __init__(self, size: int = 10_000) -> None:
        self._keys: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def cached(self, raw_key: str) -> ApiKey | None:
        """The key's copy while it is kept (detached: read its columns, do not attach it); None otherwise."""
        with self._lock:
            kept = self._keys.get(hash_key(raw_key))
        return kept[1] if kept is not None and kept[0] > time.monotonic() else None

    def authenticate(self, session: Session, raw_key: str, ttl: float) -> ApiKey | None:
        if ttl <= 0:
            return authenticate(session, raw_key)
        kept = self.cached(raw_key)
        if kept is not None:
            return kept
        key = authenticate(session, raw_key)
        if key is not None:
            with self._lock:
                digest = hash_key(raw_key)
                self._keys[digest] = (time.monotonic() + ttl, _detached_copy(key))
                self._keys.move_to_end(digest)
                while len(self._keys) > self._size:
                    self._keys.popitem(last=False)
        return key


def _detached_copy(key: ApiKey) -> ApiKey:
    """A copy of the row's values, belonging to no session: requests read its columns; a change goes to the row
    (``rotate_webhook_secret``)."""
    copy = ApiKey(**{column.key: getattr(key, column.key) for column in inspect(ApiKey).column_attrs})
    make_transient_to_detached(copy)
    return copy


def rotate_webhook_secret(session: Session, key: ApiKey, grace: timedelta) -> ApiKey:
    """A new signing secret (the row returned holds it); the old one keeps signing alongside it until the grace period
    ends. ``key`` may be a cached copy: the row is read again, locked, so that of two rotations at once the second
    keeps the first's secret as the previous one."""
    row = session.get_one(ApiKey, key.id, with_for_update=True, populate_existing=True)
    row.previous_webhook_secret = row.webhook_secret
    row.previous_webhook_secret_expires_at = utcnow() + grace
    row.webhook_secret = new_secret()
    session.flush()
    return row
