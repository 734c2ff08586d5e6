"""What routes receive by injection: settings, a database session, the caller's API key."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from ipaddress import IPv6Address, ip_address
from typing import Annotated

import anyio
from fastapi import Depends, Request, status
from sqlalchemy.orm import Session

from api.errors import ApiError
from core import admin_sessions
from core.db import ApiKey, sessions
from core.jobs.service import Broker
from core.keys import KeyCache
from core.settings import Settings, get_settings
from core.storage import Storage, storage_from
from worker import dispatcher
from worker.app import enqueue_delivery


async def current_settings() -> Settings:
    """The settings, read once per process; ``async`` so that FastAPI does not hand it to a worker thread
    on every request (each hop costs more than the lookup)."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]

# The workers, as the job actions in core.jobs.service reach them.
BROKER = Broker(dispatch=dispatcher.dispatch, deliver=enqueue_delivery)

NO_KEY = "a valid API key is required as 'Authorization: Bearer <key>'"
ADMIN_ONLY = "this route needs an admin API key"


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """A session committed when the route returns, before the response goes out (``scope="function"``): a
    client that reads the database after its answer sees what the route wrote. Routes commit earlier where
    order matters. Opening it costs nothing (it connects at its first statement); commit and close, which talk to
    the database, run in a worker thread, together, and only if it connected."""
    session = sessions(settings.database)()
    try:
        yield session
    except BaseException:
        await _in_thread(session, commit=False)
        raise
    await _in_thread(session, commit=True)


async def _in_thread(session: Session, commit: bool) -> None:
    def finish() -> None:
        try:
            if commit:
                session.commit()
        finally:
            session.close()

    if session.in_transaction():
        await anyio.to_thread.run_sync(finish)
    else:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_storage(request: Request, settings: SettingsDep) -> Storage:
    if not hasattr(request.app.state, "storage"):
        request.app.state.storage = storage_from(settings)
    return request.app.state.storage


StorageDep = Annotated[Storage, Depends(get_storage)]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


ADMIN_COOKIE = "skipstep_admin"


def admin_cookie_key(request: Request, session: Session) -> ApiKey | None:
    """The admin behind the dashboard's session cookie (core.admin_sessions), honoured for reads only,
    so that a ``<video src>`` on an admin page can load; writes still need the Bearer header."""
    token = request.cookies.get(ADMIN_COOKIE)
    if not token or request.method not in ("GET", "HEAD"):
        return None
    return admin_sessions.key_for(session, token)


KEYS = KeyCache()


async def current_key(request: Request, session: SessionDep, settings: SettingsDep) -> ApiKey:
    """The caller's key: from the process's key cache when it holds it, else looked up in a worker thread."""
    token = bearer_token(request)
    kept = KEYS.cached(token) if token else None
    if kept is not None:
        key: ApiKey | None = kept
    elif token:
        key = await anyio.to_thread.run_sync(KEYS.authenticate, session, token, settings.api_key_cache_seconds)
    else:
        key = await anyio.to_thread.run_sync(admin_cookie_key, request, session)
    if key is None:
        raise ApiError(status.HTTP_401_UNAUTHORIZED, NO_KEY, headers={"WWW-Authenticate": "Bearer"})
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]


def admin_key(key: KeyDep) -> ApiKey:
    if not key.is_admin:
        raise ApiError(status.HTTP_403_FORBIDDEN, ADMIN_ONLY)
    return key


AdminDep = Annotated[ApiKey, Depends(admin_key)]


def metrics_reader(request: Request, settings: SettingsDep) -> None:
    """Who may read /metrics: a client at an address SKIPSTEP_METRICS_ALLOW lists, or one presenting
    SKIPSTEP_METRICS_TOKEN as its bearer token."""
    if _address_allowed(request.client.host if request.client else None, settings):
        return
    expected = settings.metrics_token
    if expected is None:
        raise ApiError(status.HTTP_403_FORBIDDEN, "/metrics is not open to this address (SKIPSTEP_METRICS_ALLOW)")
    given = bearer_token(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "/metrics needs the metrics token (SKIPSTEP_METRICS_TOKEN) as a bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


def _address_allowed(host: str | None, settings: Settings) -> bool:
    try:
        address = ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in settings.metrics_networks)


MetricsReader = Depends(metrics_reader)
