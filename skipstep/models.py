"""What the SDK returns: the API's own pydantic models, the ones its routes answer with."""

from core.contract.frontier import Choice, Target
from core.contract.jobs import JobStatus
from core.contract.request import JobInput, JobRequest
from core.jobs.view import ErrorView, JobView, Links, ProgressView, ResultView

__all__ = [
    "Choice",
    "ErrorView",
    "JobInput",
    "JobRequest",
    "JobStatus",
    "JobView",
    "Links",
    "ProgressView",
    "ResultView",
    "Target",
]
