"""One error shape for every failure: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from core.db.session import UNREACHABLE

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class FieldError(BaseModel):
    field: str
    rule: str


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[FieldError] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(status_code: int, message: str, fields: list[FieldError] | None = None, **headers: str) -> Any:
    body = ErrorResponse(error=ErrorBody(code=CODES.get(status_code, "error"), message=message, fields=fields))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers or None)


def _field_name(loc: tuple[Any, ...]) -> str:
    # ("body", "cache", "params") -> "cache.params"; a model-level error on the body names the body.
    parts = [str(part) for part in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    return ".".join(parts) or str(loc[0] if loc else "body")


def _rule(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Any:
        fields = [FieldError(field=_field_name(tuple(e["loc"])), rule=_rule(e)) for e in exc.errors()]
        message = "; ".join(f"{f.field}: {f.rule}" for f in fields)
        return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, message, fields)

    @app.exception_handler(UNREACHABLE[0])
    @app.exception_handler(UNREACHABLE[1])
    async def database_down(_request: Request, _exc: Exception) -> Any:
        # The pool reconnects by itself once the database is back; clients retry.
        message = "the database is unreachable right now; retry shortly"
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, message, **{"Retry-After": "5"})

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Any:
        return error_response(exc.status_code, str(exc.detail), **(exc.headers or {}))
