"""What the SDK raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    field: str
    rule: str


class ApiError(Exception):
    """The API refused a request (its error code, message and the fields at fault), or could not be reached
    (``status_code`` None, code ``unreachable``) after the client's retries."""

    def __init__(self, status_code: int | None, code: str, message: str, fields: list[FieldError] | None = None):
        super().__init__(f"{code}: {message}" if status_code is None else f"HTTP {status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.fields = fields or []

    @classmethod
    def from_body(cls, status_code: int, body: Any, text: str) -> ApiError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status_code, "http_error", text[:300] or f"HTTP {status_code}")
        fields = [FieldError(str(f.get("field")), str(f.get("rule"))) for f in error.get("fields") or []]
        return cls(status_code, str(error.get("code", "error")), str(error.get("message", "")), fields)


class WaitTimeout(TimeoutError):
    """``jobs.wait`` gave up before the job finished; the job goes on."""
