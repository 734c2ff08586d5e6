"""What the SDK returns: the API's own pydantic models, the ones its routes answer with."""

from core.contract.jobs import JobStatus
from core.jobs.view import CacheView, ErrorView, JobInput, JobView, Links, ProgressView, ResultView

__all__ = ["CacheView", "ErrorView", "JobInput", "JobStatus", "JobView", "Links", "ProgressView", "ResultView"]
