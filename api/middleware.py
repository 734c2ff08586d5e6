"""ASGI middleware: a request id on every response and log line of a failure, one JSON answer for any
unexpected error, and the body and text checks that come before any route reads its input."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.bodies import DEPTH_RULE, text_rule, violations
from api.errors import FieldError, respond
from core.settings import get_settings

log = logging.getLogger("skipstep.api")

REQUEST_ID_HEADER = "x-request-id"
# Where admins upload LoRA files (api.routes.loras): a body up to SKIPSTEP_LORA_MAX_BYTES.
LORA_UPLOADS = "/admin/loras"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


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
            response = respond(scope["path"], status.HTTP_500_INTERNAL_SERVER_ERROR, message)
            await response(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class InputGuard:
    """Refuses, before any route reads them: a body over the size limit (413, by Content-Length or while it
    streams in), and values that break api.bodies' rules (422) in the path, the query string, a form (URL-encoded
    or multipart) or a JSON body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        limit = settings.max_body_bytes
        if (_header(scope, "content-type") or "").startswith("multipart/form-data"):
            # A form may carry an input image (a job's first frame) or a LoRA file, whose own limits are checked
            # where they are read.
            limit += settings.lora_max_bytes if scope.get("path") == LORA_UPLOADS else settings.image_max_bytes
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
        fields = await _body_fields(scope, bytes(body))
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


def _text_fields(scope: Scope) -> list[tuple[str, str]]:
    path = scope.get("path", "")
    fields = [("path", rule)] if (rule := text_rule(path)) else []
    return fields + _form_fields(scope.get("query_string", b""), "query")


def _form_fields(encoded: bytes, whole: str) -> list[tuple[str, str]]:
    """(field, rule) for URL-encoded fields (a query string, a form) whose name or value breaks a text rule."""
    fields = []
    for name, value in parse_qsl(encoded.decode("latin-1"), keep_blank_values=True, errors="replace"):
        if rule := text_rule(name):
            fields.append((whole, rule))
        elif rule := text_rule(value):
            fields.append((name, rule))
    return fields


async def _body_fields(scope: Scope, body: bytes) -> list[tuple[str, str]]:
    content_type = _header(scope, "content-type") or ""
    if content_type.startswith("application/x-www-form-urlencoded"):
        return _form_fields(body, "body")
    if content_type.startswith("multipart/form-data"):
        return await _multipart_fields(scope, body)
    if not body.strip():
        return []
    try:
        document = json.loads(body)
    except RecursionError:
        return [("body", DEPTH_RULE)]
    except ValueError:
        return []  # not JSON: the route's own parsing answers
    return violations(document)


async def _multipart_fields(scope: Scope, body: bytes) -> list[tuple[str, str]]:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form()
    except Exception:
        return []
    try:
        fields = []
        for name, value in form.multi_items():
            if rule := text_rule(name):
                fields.append(("body", rule))
            elif isinstance(value, str) and (rule := text_rule(value)):
                fields.append((name, rule))
        return sorted(set(fields))
    finally:
        await form.close()


async def _refuse_text(fields: list[tuple[str, str]], scope: Scope, receive: Receive, send: Send) -> None:
    errors = [FieldError(field=field, rule=rule) for field, rule in fields]
    message = "; ".join(f"{field}: {rule}" for field, rule in fields)
    await respond(scope["path"], status.HTTP_422_UNPROCESSABLE_CONTENT, message, errors)(scope, receive, send)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    message = f"the request body must be at most {limit} bytes"
    await respond(scope["path"], status.HTTP_413_CONTENT_TOO_LARGE, message)(scope, receive, send)


def install(app: FastAPI) -> None:
    # The last added runs first: the request id wraps everything, including the guard's refusals.
    app.add_middleware(InputGuard)
    app.add_middleware(RequestIds)
