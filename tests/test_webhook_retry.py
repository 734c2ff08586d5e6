import random

import pytest

from core.webhooks import MAX_ATTEMPTS, SCHEDULE_SECONDS, AttemptOutcome, Decision, Verdict, decide


def response(status: int, retry_after: float | None = None) -> AttemptOutcome:
    return AttemptOutcome(status, None, 0.1, retry_after_seconds=retry_after)


def no_jitter(low: float, high: float) -> float:
    return 1.0


def test_schedule_is_the_standard_one_over_about_three_days() -> None:
    hour = 3600
    assert (0, 5, 300, 1800, 2 * hour, 5 * hour, 10 * hour, 14 * hour, 20 * hour, 24 * hour) == SCHEDULE_SECONDS
    assert MAX_ATTEMPTS == 10
    assert 3 * 24 * hour < sum(SCHEDULE_SECONDS) < 3.5 * 24 * hour


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert decide(response(status), 1) == Decision(Verdict.DELIVERED, f"HTTP {status}")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses_follow_the_schedule(status: int) -> None:
    assert decide(response(status), 1, no_jitter) == Decision(Verdict.RETRY, f"HTTP {status}", 5)
    assert decide(response(status), 2, no_jitter).delay_seconds == 300
    assert decide(response(status), 9, no_jitter).delay_seconds == 24 * 3600


@pytest.mark.parametrize("error", ["connection refused", "read timeout", "could not resolve hooks.example.com: x"])
def test_network_errors_are_retried(error: str) -> None:
    outcome = AttemptOutcome(None, error, 2.0)
    assert decide(outcome, 3, no_jitter) == Decision(Verdict.RETRY, error, 1800)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_fail(status: int) -> None:
    assert decide(response(status), 1) == Decision(Verdict.FAILED, f"HTTP {status}: redirects are not followed")


@pytest.mark.parametrize("status", [100, 400, 401, 403, 404, 405, 413, 422, 600])
def test_other_statuses_fail(status: int) -> None:
    assert decide(response(status), 1) == Decision(Verdict.FAILED, f"HTTP {status}")


def test_410_is_gone() -> None:
    assert decide(response(410), 1) == Decision(Verdict.GONE, "HTTP 410: the endpoint is gone")


def test_refused_urls_fail_at_once() -> None:
    outcome = AttemptOutcome(
        None, "webhook URL must resolve to a public address; 10.0.0.1 is private", 0.0, refused=True
    )
    assert decide(outcome, 1) == Decision(Verdict.FAILED, outcome.error)


def test_exhausted_schedule_fails() -> None:
    assert decide(response(503), MAX_ATTEMPTS - 1, no_jitter).verdict is Verdict.RETRY
    assert decide(response(503), MAX_ATTEMPTS) == Decision(Verdict.FAILED, "HTTP 503; gave up after 10 attempts")
    assert (
        decide(AttemptOutcome(None, "read timeout", 5.0), MAX_ATTEMPTS).reason
        == "read timeout; gave up after 10 attempts"
    )


def test_jitter_stays_within_twenty_percent() -> None:
    rng = random.Random(7)
    delays = [decide(response(500), 4, rng.uniform).delay_seconds for _ in range(200)]
    assert all(0.8 * 7200 <= delay <= 1.2 * 7200 for delay in delays)
    assert len(set(delays)) > 100
    assert decide(response(500), 4, lambda low, high: low).delay_seconds == pytest.approx(0.8 * 7200)
    assert decide(response(500), 4, lambda low, high: high).delay_seconds == pytest.approx(1.2 * 7200)


def test_retry_after_lengthens_but_never_shortens_the_delay() -> None:
    assert decide(response(429, retry_after=120), 1, no_jitter).delay_seconds == 120
    assert decide(response(429, retry_after=1), 2, no_jitter).delay_seconds == 300
    assert decide(response(503, retry_after=30 * 24 * 3600), 1, no_jitter).delay_seconds == 24 * 3600


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        decide(response(200), 0)
