"""Queue-depth back-pressure: submits get 429 while the queue holds ``SLOTQ_MAX_QUEUED_JOBS``.

A cheap count runs before a submit reads its body, so a full queue rejects uploads without
reading them. The store checks again inside the submit's transaction with the exact number of
new jobs (`slotq.store.QueueFullError`), so a batch that would pass the limit is rejected whole.
"""

from __future__ import annotations

from api.errors import ApiError
from api.state import current_state
from slotq.store import QueueFullError

#: Seconds a client is told to wait after a full queue rejected its submit. Workers drain a
#: queue at their own pace, so this is a polling interval, not a prediction.
QUEUE_FULL_RETRY_AFTER_S = 30


def check_queue_room() -> None:
    """Raise 429 when the queue is already at its limit, before the request body is read."""
    state = current_state()
    queued = state.repository.queued_job_count()
    if queued >= state.settings.max_queued_jobs:
        raise queue_full(QueueFullError(queued, 1, state.settings.max_queued_jobs))


def queue_full(error: QueueFullError) -> ApiError:
    """Return the 429 error for ``error``, naming the queue depth and the limit."""
    return ApiError(
        429,
        "queue_full",
        f"the queue is full: {error.queued} jobs are queued and this submit adds {error.adding}, "
        f"past the limit of {error.limit} queued jobs; retry after {QUEUE_FULL_RETRY_AFTER_S} s",
        [{"field": "queue_depth", "value": error.queued, "message": f"must stay at most {error.limit} with this submit"}],
        headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
    )
