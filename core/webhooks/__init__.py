"""Webhook delivery core (Standard Webhooks): signing, SSRF guard, one HTTP attempt, retry policy."""

from core.webhooks.addresses import Target, UnresolvableHost, UnsafeWebhookURL, check_url_syntax, resolve_target
from core.webhooks.retry import MAX_ATTEMPTS, SCHEDULE_SECONDS, Decision, Verdict, decide
from core.webhooks.signing import headers, new_secret, secret_key, sign
from core.webhooks.transport import AttemptOutcome, deliver, parse_retry_after, post

__all__ = [
    "MAX_ATTEMPTS",
    "SCHEDULE_SECONDS",
    "AttemptOutcome",
    "Decision",
    "Target",
    "UnresolvableHost",
    "UnsafeWebhookURL",
    "Verdict",
    "check_url_syntax",
    "decide",
    "deliver",
    "headers",
    "new_secret",
    "parse_retry_after",
    "post",
    "resolve_target",
    "secret_key",
    "sign",
]
