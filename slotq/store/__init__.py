"""Job store: SQLAlchemy models, engines, the job repository and schema migrations."""

from slotq.store.batches import (
    BatchCancelOutcome,
    BatchCounts,
    BatchLine,
    BatchRecord,
    BatchResult,
    BatchSpec,
    ResultsRange,
)
from slotq.store.cursor import InvalidCursorError
from slotq.store.engine import make_engine
from slotq.store.models import (
    BATCH_STATUSES,
    FINISHED_BATCH_STATUSES,
    FINISHED_STATUSES,
    STATUSES,
    Base,
    Batch,
    BatchStatus,
    Job,
    JobStatus,
)
from slotq.store.records import CancelOutcome, CancelResult, JobRecord
from slotq.store.repository import JobRepository

__all__ = [
    "BATCH_STATUSES",
    "FINISHED_BATCH_STATUSES",
    "Batch",
    "BatchCancelOutcome",
    "BatchCounts",
    "BatchLine",
    "BatchRecord",
    "BatchResult",
    "BatchSpec",
    "BatchStatus",
    "ResultsRange",
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
