"""A poller's conditional GET answered before the router: ``GET /jobs/{id}`` with ``If-None-Match`` holding the tag
the API last served for the job (``core.jobs.tag_cache``) is a 304 from the process's API-key cache and one Redis
script, with no database session and no dependency solving. The request rate is charged as on the route. Anything
else, and every miss (no cached key, no current entry, another owner, a ``wait``), goes on to the route
(``api.routes.jobs.get_job``), which gives the same answer the slow way."""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI, status
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import KEYS, bearer_token
from api.errors import ApiError, respond
from api.limits import check_rate
from core.jobs.polling import retry_after, seen_tags
from core.jobs.tag_cache import lookup
from core.settings import get_settings

_JOB = re.compile(r"/jobs/([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})")


class ConditionalGets:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._not_modified(scope) if scope["type"] == "http" else None
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _not_modified(self, scope: Scope) -> Response | None:
        match = _JOB.fullmatch(scope["path"])
        if scope["method"] != "GET" or match is None or scope["query_string"]:
            return None
        request = Request(scope)
        seen = seen_tags(request.headers.get("if-none-match"))
        token = bearer_token(request)
        settings = get_settings()
        if not seen or token is None or settings.broker_url is None:
            return None
        key = KEYS.cached(token)
        if key is None:
            return None
        cached = await lookup(settings.broker_url, uuid.UUID(match.group(1)))
        if cached is None or cached.owner != str(key.id) or cached.tag not in seen:
            return None
        try:
            await check_rate(key, settings)
        except ApiError as refused:
            return respond(scope["path"], refused.status_code, refused.message, None, **(refused.headers or {}))
        answer = {"ETag": cached.tag, "Cache-Control": "no-cache"}
        if cached.queued:
            answer["Retry-After"] = str(retry_after(cached.retry_at, settings))
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=answer)


def install(app: FastAPI) -> None:
    # Added before the other middleware, so it runs innermost: request ids and security headers wrap its answers.
    app.add_middleware(ConditionalGets)
