"""Errors that reach users: each names what was wrong and the rule it broke."""


class SkipstepError(Exception):
    """Base class for errors with a message fit for users."""


class ModelLoadError(SkipstepError):
    """A model directory is missing, incomplete or unreadable."""


class InvalidRequest(SkipstepError):
    """A request field breaks a rule that only the loaded model can check."""

    def __init__(self, field: str, rule: str, *more: tuple[str, str]) -> None:
        self.problems = [(field, rule), *more]
        super().__init__("; ".join(f"{name}: {broken}" for name, broken in self.problems))


class CacheConfigError(SkipstepError):
    """An unknown strategy or profile, or strategy parameters outside their rules."""


class Conflict(SkipstepError):
    """A request that contradicts what the service already holds (an Idempotency-Key used for another body)."""


class LimitReached(SkipstepError):
    """A per-key limit the request would pass; ``retry_after``: seconds worth waiting before asking again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
