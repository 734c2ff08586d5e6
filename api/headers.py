"""Security headers on every response: no MIME sniffing, no framing, no referrer outside the site, and a
Content-Security-Policy. The dashboard (/admin) loads only its own scripts, styles and data, and videos from
the service or its video store; every other answer (JSON, an MP4, a redirect) needs nothing at all. A response
that brings its own policy (the API docs pages, whose inline script carries a nonce) keeps it."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings, get_settings
from core.storage import storage_from

CSP = "content-security-policy"
COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}
API_POLICY = "default-src 'none'; media-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def admin_policy(media_origin: str | None) -> str:
    media = f"'self' {media_origin}" if media_origin else "'self'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        f"media-src {media}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


@cache
def _admin_policy() -> str:
    return admin_policy(video_store_origin(get_settings()))


def video_store_origin(settings: Settings) -> str | None:
    """Where a job's video redirects to (the S3 store's presigned URLs), if not to the service itself."""
    try:
        url = storage_from(settings).presigned_url("csp-probe")
    except BotoCoreError:  # no credentials yet: the video will not load anyway
        return None
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root: str = scope.get("root_path", "")
        path: str = scope["path"].removeprefix(root) if root else scope["path"]
        admin = path == "/admin" or path.startswith("/admin/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                wanted = COMMON | {CSP: _admin_policy() if admin else API_POLICY}
                headers += [
                    (name.encode(), value.encode()) for name, value in wanted.items() if name.encode() not in present
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    # Added after the other middleware, so it runs outermost: the request-id wrapper's 500s get the headers too.
    app.add_middleware(SecurityHeaders)
