"""Job store: SQLAlchemy models, engines, the job repository (jobs, batches, tenants, API keys,
idempotency keys) and schema migrations."""

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
from slotq.store.idempotency import IdempotencyClaim, IdempotencyKeyExistsError, QueueFullError, StoredResponse
from slotq.store.leases import Claim, ExpiredLeases
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
    Tenant,
)
from slotq.store.records import CancelOutcome, CancelResult, JobRecord
from slotq.store.repository import JobRepository
from slotq.store.tenants import ApiKeyRecord, TenantCounts, TenantRecord

__all__ = [
    "ApiKeyRecord",
    "IdempotencyClaim",
    "IdempotencyKeyExistsError",
    "QueueFullError",
    "StoredResponse",
    "Tenant",
    "TenantCounts",
    "TenantRecord",
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
    "Claim",
    "ExpiredLeases",
    "InvalidCursorError",
    "Job",
    "JobRecord",
    "JobRepository",
    "JobStatus",
    "make_engine",
]
