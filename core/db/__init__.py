from core.db.models import ApiKey, Base, Job, JobStatus, Worker, utcnow
from core.db.session import engine_for, session_scope, sessions

__all__ = ["ApiKey", "Base", "Job", "JobStatus", "Worker", "engine_for", "session_scope", "sessions", "utcnow"]
