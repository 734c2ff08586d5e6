"""ASGI middleware: a request id on every response and log line of a failure, one JSON answer for any
unexpected error, and the body and text checks that come before any route reads its input."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import FieldError, error_response
from core.settings import get_settings

log = logging.getLogger("skipstep.api")

REQUEST_ID_HEADER = "x-request-id"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# C0 controls other than tab, line feed and carriage return, and DEL: never meaningful in a prompt, a filter
# or a name, and PostgreSQL refuses NUL in text.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTROL_RULE = "must not contain control characters (U+0000-U+001F other than tab and line breaks, or U+007F)"
# A JSON body can only carry a control character escaped; this finds candidates cheaply, the parse decides.
_ESCAPED_CONTROL = re.compile(rb"\\u00[01][0-9a-fA-F]|\\u007[fF]")


class RequestIds:
    """Gives each request an id (the client's X-Request-ID if it is sane), returns it in X-Request-ID, and turns
    any exception a route lets through into a 500 in the JSON error shape whose log line names the same id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER)
        rid = given if given and _GIVEN_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s: %s %s failed with an unexpected error", rid, scope["method"], scope["path"])
            if started:
                raise
            message = f"an unexpected error occurred; quote request id {rid} when reporting it"
            response = error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, message)
            await response(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class InputGuard:
    """Refuses, before any route reads them: a body over the size limit (413, by Content-Length or while it
    streams in) and control characters in the path, the query string, a form or a JSON body's strings (422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_body_bytes
        fields = _text_fields(scope)
        if fields:
            await _refuse_text(fields, scope, receive, send)
            return
        declared = _header(scope, "content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit, scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > limit:
                await _too_large(limit, scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        fields = _body_text_fields(scope, bytes(body))
        if fields:
            await _refuse_text(fields, scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _text_fields(scope: Scope) -> list[str]:
    fields = ["path"] if CONTROL.search(scope.get("path", "")) else []
    return fields + _form_fields(scope.get("query_string", b""), "query")


def _form_fields(encoded: bytes, whole: str) -> list[str]:
    """The names of URL-encoded fields (a query string, a form) whose name or value has a control character."""
    fields = []
    for name, value in parse_qsl(encoded.decode("latin-1"), keep_blank_values=True, errors="replace"):
        if CONTROL.search(name) or CONTROL.search(value):
            fields.append(name if not CONTROL.search(name) else whole)
    return fields


def _body_text_fields(scope: Scope, body: bytes) -> list[str]:
    if (_header(scope, "content-type") or "").startswith("application/x-www-form-urlencoded"):
        return _form_fields(body, "body")
    return _json_text_fields(body) if _ESCAPED_CONTROL.search(body) else []


def _json_text_fields(body: bytes) -> list[str]:
    try:
        document = json.loads(body)
    except ValueError:
        return []  # not JSON: the route's own parsing answers
    return sorted(set(_controlled(document, "")))


def _controlled(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str):
        if CONTROL.search(value):
            yield path or "body"
    elif isinstance(value, dict):
        for name, item in value.items():
            inner = f"{path}.{name}" if path else str(name)
            yield from ([inner] if CONTROL.search(str(name)) else _controlled(item, inner))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _controlled(item, f"{path}.{index}" if path else str(index))


async def _refuse_text(fields: list[str], scope: Scope, receive: Receive, send: Send) -> None:
    errors = [FieldError(field=field, rule=CONTROL_RULE) for field in fields]
    message = "; ".join(f"{field}: {CONTROL_RULE}" for field in fields)
    await error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, message, errors)(scope, receive, send)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    message = f"the request body must be at most {limit} bytes"
    await error_response(status.HTTP_413_CONTENT_TOO_LARGE, message)(scope, receive, send)


def install(app: FastAPI) -> None:
    # The last added runs first: the request id wraps everything, including the guard's refusals.
    app.add_middleware(InputGuard)
    app.add_middleware(RequestIds)
