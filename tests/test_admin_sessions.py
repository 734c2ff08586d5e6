"""Dashboard sessions on the real service: the cookie is a random token stored hashed, never the key;
sessions are listed for an admin, revocable, and expire; logging out ends one on the server."""

from __future__ import annotations

from datetime import timedelta

import httpx
from service import Service
from sqlalchemy import select, update

from core.db import AdminSession, session_scope, utcnow
from core.keys import hash_key

COOKIE = "skipstep_admin"


def logged_in(service: Service, user_agent: str) -> str:
    """Logs in through the form as the admin; the session cookie's value."""
    with httpx.Client(base_url=service.url, timeout=30, headers={"User-Agent": user_agent}) as browser:
        response = browser.post("/admin/login", data={"key": service.keys["admin"], "next": "/admin"})
    assert response.status_code == 303, response.text
    return response.cookies[COOKIE]


def overview_status(service: Service, token: str) -> int:
    with httpx.Client(base_url=service.url, timeout=30, cookies={COOKIE: token}) as browser:
        return browser.get("/admin/api/overview").status_code


def test_the_cookie_is_a_stored_hash_of_a_random_token_never_the_key(service: Service) -> None:
    token = logged_in(service, "cookie-test")
    assert token != service.keys["admin"] and service.keys["admin"] not in token
    with session_scope(service.settings.database) as session:
        row = session.scalar(select(AdminSession).where(AdminSession.token_hash == hash_key(token)))
        assert row is not None and row.user_agent == "cookie-test"
        assert timedelta(hours=11) < row.expires_at - utcnow() <= timedelta(hours=12)
    assert overview_status(service, token) == 200
    assert overview_status(service, service.keys["admin"]) == 401  # a key is no session


def test_sessions_are_listed_and_revoked_by_an_admin(service: Service) -> None:
    token = logged_in(service, "revoke-test")
    with service.client("admin") as admin:
        listed = admin.get("/admin/api/sessions").json()["sessions"]
        [mine] = [entry for entry in listed if entry["user_agent"] == "revoke-test"]
        assert mine["key"] == "admin" and "token" not in str(mine).lower()
        assert admin.post(f"/admin/api/sessions/{mine['id']}/revoke").status_code == 200
        assert admin.post(f"/admin/api/sessions/{mine['id']}/revoke").status_code == 404
        assert mine["id"] not in [entry["id"] for entry in admin.get("/admin/api/sessions").json()["sessions"]]
    assert overview_status(service, token) == 401


def test_an_expired_session_is_refused(service: Service) -> None:
    token = logged_in(service, "expiry-test")
    with session_scope(service.settings.database) as session:
        session.execute(
            update(AdminSession)
            .where(AdminSession.token_hash == hash_key(token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert overview_status(service, token) == 401


def test_logging_out_ends_the_session_on_the_server(service: Service) -> None:
    token = logged_in(service, "logout-test")
    with httpx.Client(base_url=service.url, timeout=30, cookies={COOKIE: token}) as browser:
        assert browser.post("/admin/logout").status_code == 303
    # The old cookie, replayed after logout, no longer works.
    assert overview_status(service, token) == 401


def test_a_session_cookie_does_not_authorise_writes(service: Service) -> None:
    token = logged_in(service, "write-test")
    with service.client("admin") as admin:
        [mine] = [e for e in admin.get("/admin/api/sessions").json()["sessions"] if e["user_agent"] == "write-test"]
    with httpx.Client(base_url=service.url, timeout=30, cookies={COOKIE: token}) as browser:
        assert browser.post(f"/admin/api/sessions/{mine['id']}/revoke").status_code == 401
