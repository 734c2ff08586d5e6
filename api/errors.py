"""One error shape for every failure: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from core.db.session import UNREACHABLE
from core.errors import Conflict, InvalidRequest, LimitReached

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class FieldError(BaseModel):
    field: str = Field(
        description="The field at fault, dotted for nested ones (`cache.params`); a parameter or header by its name.",
        examples=["num_frames"],
    )
    rule: str = Field(description="The rule it breaks.", examples=["must be 4k+1 (e.g. 9, 17, 33) for wan models"])


class ErrorBody(BaseModel):
    code: str = Field(
        description="The status as a word: " + ", ".join(f"`{code}`" for code in CODES.values()) + " (`error` "
        "for any other).",
        examples=["invalid_request"],
    )
    message: str = Field(
        description="What went wrong, for people.",
        examples=["num_frames: must be 4k+1 (e.g. 9, 17, 33) for wan models"],
    )
    fields: list[FieldError] | None = Field(
        default=None, description="With `invalid_request` (422): each field at fault and its rule; absent otherwise."
    )


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="What went wrong.")


class ApiError(Exception):
    """What a route or dependency raises to answer with an error; ``install`` turns it into the one shape."""

    def __init__(
        self,
        status_code: int,
        message: str,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code, self.message, self.fields, self.headers = status_code, message, fields, headers

    @classmethod
    def invalid(cls, field: str, rule: str) -> ApiError:
        """422 naming the field and the rule it broke."""
        return cls(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{field}: {rule}", [FieldError(field=field, rule=rule)])


def error_response(status_code: int, message: str, fields: list[FieldError] | None = None, **headers: str) -> Any:
    body = ErrorResponse(error=ErrorBody(code=CODES.get(status_code, "error"), message=message, fields=fields))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers or None)


DATABASE_DOWN = "the database is unreachable right now; retry shortly"

# Under this prefix errors take OpenAI's shape, for clients of its API (api/routes/openai_videos.py).
OPENAI_PREFIX = "/v1/"
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error", 503: "server_error"}
# OpenAI answers a request that breaks a field's rule with 400.
OPENAI_FIELDS = {"width": "size", "height": "size", "num_frames": "seconds"}


class OpenAIErrorBody(BaseModel):
    message: str = Field(
        description="What went wrong, for people.", examples=["size: must be WIDTHxHEIGHT, e.g. 832x480"]
    )
    type: str = Field(
        description="`invalid_request_error`, `authentication_error`, `rate_limit_error`, ...",
        examples=["invalid_request_error"],
    )
    param: str | None = Field(
        description="The OpenAI request field at fault, if one is; null otherwise.", examples=["size"]
    )
    code: str = Field(description="The status as a word, as skipstep's errors have it.", examples=["bad_request"])


class OpenAIErrorResponse(BaseModel):
    """The error shape under ``/v1/``, as OpenAI's API and its clients have it."""

    error: OpenAIErrorBody = Field(description="What went wrong.")


def openai_status(status_code: int) -> int:
    """OpenAI answers a request that breaks a field's rule with 400 where skipstep says 422."""
    return status.HTTP_400_BAD_REQUEST if status_code == status.HTTP_422_UNPROCESSABLE_CONTENT else status_code


def openai_error_response(status_code: int, message: str, param: str | None = None, **headers: str) -> Any:
    status_code = openai_status(status_code)
    kind = OPENAI_TYPES.get(status_code, "invalid_request_error" if status_code < 500 else "server_error")
    body = OpenAIErrorResponse(
        error=OpenAIErrorBody(message=message, type=kind, param=param, code=CODES.get(status_code, "error"))
    )
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers or None)


def respond(path: str, status_code: int, message: str, fields: list[FieldError] | None = None, **headers: str) -> Any:
    """The error response for a request to ``path``: OpenAI's shape under ``/v1/``, skipstep's elsewhere."""
    if path.startswith(OPENAI_PREFIX):
        param = OPENAI_FIELDS.get(fields[0].field, fields[0].field) if fields else None
        return openai_error_response(status_code, message, param, **headers)
    return error_response(status_code, message, fields, **headers)


def _respond(request: Request, status_code: int, message: str, fields: list[FieldError] | None, **headers: str) -> Any:
    return respond(request.url.path, status_code, message, fields, **headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    # ("body", "cache", "params") -> "cache.params"; a model-level error on the body names the body.
    parts = [str(part) for part in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    return ".".join(parts) or str(loc[0] if loc else "body")


def _rule(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        fields = [FieldError(field=_field_name(tuple(e["loc"])), rule=_rule(e)) for e in exc.errors()]
        message = "; ".join(f"{f.field}: {f.rule}" for f in fields)
        return _respond(request, status.HTTP_422_UNPROCESSABLE_CONTENT, message, fields)

    @app.exception_handler(UNREACHABLE[0])
    @app.exception_handler(UNREACHABLE[1])
    async def database_down(request: Request, _exc: Exception) -> Any:
        # The pool reconnects by itself once the database is back; clients retry.
        return _respond(request, status.HTTP_503_SERVICE_UNAVAILABLE, DATABASE_DOWN, None, **{"Retry-After": "5"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Any:
        return _respond(request, exc.status_code, exc.message, exc.fields, **(exc.headers or {}))

    @app.exception_handler(InvalidRequest)
    async def invalid_for_model(request: Request, exc: InvalidRequest) -> Any:
        # The size rules of the job's model family, checked once the model is known.
        fields = [FieldError(field=field, rule=rule) for field, rule in exc.problems]
        return _respond(request, status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc), fields)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> Any:
        return _respond(request, status.HTTP_409_CONFLICT, str(exc), None)

    @app.exception_handler(LimitReached)
    async def limit_reached(request: Request, exc: LimitReached) -> Any:
        headers = {"Retry-After": str(exc.retry_after)}
        return _respond(request, status.HTTP_429_TOO_MANY_REQUESTS, str(exc), None, **headers)

    # Starlette's own errors (no such route, method not allowed) in the same shape.
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        return _respond(request, exc.status_code, str(exc.detail), None, **(exc.headers or {}))
