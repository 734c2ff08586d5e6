"""The per-key request rate as a route dependency, on every authenticated route (job sizes and jobs in flight are
the submit's own checks, core.jobs.service)."""

from __future__ import annotations

from fastapi import Depends, status

from api.deps import KeyDep, SettingsDep
from api.errors import ApiError
from core.db import ApiKey
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


RATE_LIMITED = [Depends(rate_limit)]
