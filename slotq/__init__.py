"""slot-queue: an asynchronous job service that runs SLOT test-time adaptation on causal LMs.

The package contains what the API and the workers share: settings, request validation, the job
store and logging. The SLOT engine itself lives in ``slot_core``.
"""

__version__ = "0.1.0"


class SlotqError(Exception):
    """Base class of every error that slot-queue raises on purpose."""
