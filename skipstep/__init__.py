"""skipstep's Python SDK.

    from skipstep import Client

    client = Client("http://127.0.0.1:8000", api_key="...")
    job = client.jobs.create(prompt="a red fox running through snow", cache={"strategy": "magcache"})
    job = client.jobs.wait(job.id, timeout=600, on_progress=lambda job: print(job.status, job.progress))
    client.jobs.download(job.id, "fox.mp4")
    job = client.jobs.create(prompt="a red fox running through snow", target={"tier": "high"})  # cache `auto`
    print(job.expected.auto.strategy, job.expected.auto.reason)

``AsyncClient`` has the same calls, awaited. Imports no torch.
"""

from skipstep.client import AsyncClient, Client
from skipstep.errors import ApiError, FieldError, WaitTimeout
from skipstep.models import Choice, JobStatus, JobView, ProgressView, Target
from skipstep.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError",
    "AsyncClient",
    "Choice",
    "Client",
    "FieldError",
    "JobStatus",
    "JobView",
    "ProgressView",
    "Target",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
