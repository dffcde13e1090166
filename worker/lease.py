"""Lease renewal for the jobs that one worker process is running.

A claimed job carries a lease (`slotq.store.leases`). While the model works, a background
thread renews the leases every third of their length, so a job keeps its lease for as long as
its worker is alive, however long the job takes. A killed worker stops renewing, and the
sweeper queues its jobs again once their leases pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from slotq.store import repository
from slotq.store.leases import Claim

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Context manager that renews the leases of ``claims`` until it exits."""

    def __init__(self, claims: Sequence[Claim], worker: str, lease_s: float):
        self.claims = list(claims)
        self.worker = worker
        self.lease_s = lease_s
        self.lost: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotq-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            self._renew()

    def _renew(self) -> None:
        active = [claim for claim in self.claims if claim.job_id not in self.lost]
        if not active:
            return

        try:
            lost = repository.default_repository().renew_leases(active, self.worker, self.lease_s)
        except Exception:
            # A database outage shorter than the lease costs nothing. After a longer one the
            # sweeper may have queued the job again, so this attempt's result is then refused.
            logger.warning("renewing the leases of %d jobs failed; retrying", len(active), exc_info=True)
            return

        for job_id in lost:
            logger.warning("job %s: lease lost (queued again or finished); its result will not be stored", job_id)
        self.lost.update(lost)
