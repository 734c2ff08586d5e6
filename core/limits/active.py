"""Jobs an API key has in flight (queued or running)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import Job, JobStatus

IN_FLIGHT = (JobStatus.queued, JobStatus.running)


def active_jobs(session: Session, owner_id: uuid.UUID) -> int:
    return (
        session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner_id, Job.status.in_(IN_FLIGHT)))
        or 0
    )
