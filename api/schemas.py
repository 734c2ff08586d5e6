"""List responses. A job's request is ``core.contract.request.JobRequest``, the job itself
``core.jobs.view.JobView``."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.jobs.view import JobView


class JobPage(BaseModel):
    jobs: list[JobView] = Field(description="This page's jobs, newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page.",
        examples=["MjAyNS0wNi0wMVQxMjowMDowMCswMDowMHwzZjZjMWEyZS04YjRkLTRjMWUtOWE1Ny0yZDBlNmYxYjljODQ="],
    )
