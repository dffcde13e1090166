"""Job store: SQLAlchemy models, engines, the job repository and schema migrations."""

from slotq.store.cursor import InvalidCursorError
from slotq.store.engine import make_engine
from slotq.store.models import FINISHED_STATUSES, STATUSES, Base, Job, JobStatus
from slotq.store.records import CancelOutcome, CancelResult, JobRecord
from slotq.store.repository import JobRepository

__all__ = [
    "FINISHED_STATUSES",
    "STATUSES",
    "Base",
    "CancelOutcome",
    "CancelResult",
    "InvalidCursorError",
    "Job",
    "JobRecord",
    "JobRepository",
    "JobStatus",
    "make_engine",
]
