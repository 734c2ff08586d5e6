"""The per-key request rate as a route dependency, on every authenticated route (job sizes and jobs in flight are
the submit's own checks, core.jobs.service)."""

from __future__ import annotations

from fastapi import Depends, status

from api.deps import KeyDep, SettingsDep
from api.errors import ApiError
from core.db import ApiKey
from core.limits.rate import take
from core.settings import Settings


async def check_rate(key: ApiKey, settings: Settings) -> None:
    """Take one token from the key's bucket, or raise a 429 saying how long to wait."""
    if settings.broker_url is None or (key.is_admin and not settings.limit_admin_keys):
        return
    rate = key.rate_per_second if key.rate_per_second is not None else settings.rate_per_second
    burst = key.rate_burst if key.rate_burst is not None else settings.rate_burst
    verdict = await take(settings.broker_url, str(key.id), rate, burst)
    if not verdict.allowed:
        raise ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit: at most {rate:g} requests per second (bursts of {burst}) for this API key; "
            f"retry in {verdict.retry_after} s",
            headers={"Retry-After": str(verdict.retry_after)},
        )


async def rate_limit(key: KeyDep, settings: SettingsDep) -> None:
    """``check_rate`` as a dependency, applied to the API's routers."""
    await check_rate(key, settings)


RATE_LIMITED = [Depends(rate_limit)]
