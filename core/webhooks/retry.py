"""Retry policy: what to do after an attempt, from its outcome alone."""

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from core.webhooks.transport import AttemptOutcome

MINUTE = 60
HOUR = 3600
# SCHEDULE_SECONDS[n] is the delay before attempt n + 1: the first attempt is immediate, the last about 3 days on.
SCHEDULE_SECONDS: tuple[float, ...] = (0, 5, 5 * MINUTE, 30 * MINUTE) + tuple(h * HOUR for h in (2, 5, 10, 14, 20, 24))
MAX_ATTEMPTS = len(SCHEDULE_SECONDS)
JITTER = 0.2
MAX_RETRY_AFTER_SECONDS = 24 * HOUR


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    GONE = "gone"  # HTTP 410: stop this message and disable the endpoint


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    delay_seconds: float | None = None  # set for RETRY only: wait this long after the attempt ended


def decide(
    outcome: AttemptOutcome,
    attempt_number: int,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Decision:
    """Decides after attempt number `attempt_number` (1 for the first); `uniform` draws the jitter factor."""
    if attempt_number < 1:
        raise ValueError("attempt_number counts from 1")
    status = outcome.status_code
    what = f"HTTP {status}" if status is not None else outcome.error or "no response"
    if outcome.refused:
        return Decision(Verdict.FAILED, what)
    if status is not None:
        if 200 <= status < 300:
            return Decision(Verdict.DELIVERED, what)
        if status == 410:
            return Decision(Verdict.GONE, f"{what}: the endpoint is gone")
        if 300 <= status < 400:
            return Decision(Verdict.FAILED, f"{what}: redirects are not followed")
        if status not in (408, 429) and not 500 <= status < 600:
            return Decision(Verdict.FAILED, what)
    if attempt_number >= MAX_ATTEMPTS:
        return Decision(Verdict.FAILED, f"{what}; gave up after {attempt_number} attempts")
    delay = SCHEDULE_SECONDS[attempt_number] * uniform(1 - JITTER, 1 + JITTER)
    if outcome.retry_after_seconds is not None:
        delay = max(delay, min(outcome.retry_after_seconds, MAX_RETRY_AFTER_SECONDS))
    return Decision(Verdict.RETRY, what, delay)
