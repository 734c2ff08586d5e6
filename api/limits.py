"""The per-key limits as route dependencies: request rate on every authenticated route, jobs in flight on submit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, status

from api.deps import KeyDep, SessionDep, SettingsDep
from api.errors import ApiError, FieldError, error_response
from core.contract.shapes import Shape
from core.db import ApiKey
from core.limits.active import active_jobs
from core.limits.policy import SizeLimits
from core.limits.rate import limiter_for
from core.settings import Settings


def _limited(key: ApiKey, settings: Settings) -> bool:
    return settings.limit_admin_keys or not key.is_admin


def rate_limit(key: KeyDep, settings: SettingsDep) -> None:
    """Take one token from the key's bucket, or answer 429 with how long to wait. Applied to the API's routers."""
    if settings.broker_url is None or not _limited(key, settings):
        return
    rate = key.rate_per_second if key.rate_per_second is not None else settings.rate_per_second
    burst = key.rate_burst if key.rate_burst is not None else settings.rate_burst
    verdict = limiter_for(settings.broker_url).take(str(key.id), rate, burst)
    if not verdict.allowed:
        raise ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit: at most {rate:g} requests per second (bursts of {burst}) for this API key; "
            f"retry in {verdict.retry_after} s",
            headers={"Retry-After": str(verdict.retry_after)},
        )


def room_for_a_job(key: KeyDep, session: SessionDep, settings: SettingsDep) -> None:
    """Refuse a new job while the key has as many queued and running jobs as it may."""
    cap = key.max_active_jobs if key.max_active_jobs is not None else settings.max_active_jobs
    if cap <= 0 or not _limited(key, settings):
        return
    if active_jobs(session, key.id) >= cap:
        raise ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"this API key already has {cap} queued or running jobs, the most it may; "
            "submit again once some have finished",
            headers={"Retry-After": "10"},
        )


RATE_LIMITED = [Depends(rate_limit)]
RoomForJob = Annotated[None, Depends(room_for_a_job)]


def size_refusal(key: ApiKey, settings: Settings, fields: dict[str, Any]) -> Any:
    """A 422 naming every job-size ceiling the job's row ``fields`` are over, or None."""
    shape = Shape(*(fields[name] for name in ("width", "height", "num_frames", "num_inference_steps")))
    problems = SizeLimits.for_key(key, settings).violations(shape)
    if not problems:
        return None
    errors = [FieldError(field=field, rule=rule) for field, rule in problems]
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(f"{f}: {r}" for f, r in problems), errors)
