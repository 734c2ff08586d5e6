"""Errors that reach users: each names what was wrong and the rule it broke."""


class SkipstepError(Exception):
    """Base class for errors with a message fit for users."""


class ModelLoadError(SkipstepError):
    """A model directory is missing, incomplete or unreadable."""


class InvalidRequest(SkipstepError):
    """A request field breaks a rule that only the loaded model can check."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class CacheConfigError(SkipstepError):
    """An unknown strategy or profile, or strategy parameters outside their rules."""
