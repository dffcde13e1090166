"""The sweeper: the job store is the record of what must run; the broker only wakes workers up.

Each pass repairs the three ways a queued job can miss its worker:

1. Its worker died. A running job whose lease has passed is queued again, or failed once it
   has used ``SLOTQ_MAX_ATTEMPTS`` attempts (`JobRepository.requeue_expired`).
2. Its message was never sent: the broker was down when the API stored the job, or the API
   process died in between. A queued job with no recorded send, queued more than
   ``SLOTQ_ENQUEUE_GRACE_S`` ago, is sent now.
3. Its message was lost: the broker restarted without its data. When fewer messages wait in
   the queue than there are queued jobs that were sent more than the grace period ago, the
   difference is sent again, oldest send first. The queue is first in, first out, so the
   messages a restart loses are the oldest ones. A worker that has taken a message but not yet
   claimed its job also leaves the queue one message short, so a job is sent again only when
   two passes in a row find it among the missing.

A message sent twice is harmless: the second delivery finds the job claimed and does nothing.
So several sweepers may run at once, and a pass that races a worker changes nothing twice.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter

from api.enqueue import Enqueue, PartialSendError, send_recorded
from slotq.metrics import serve_metrics
from slotq.settings import Settings
from slotq.store import JobRepository

logger = logging.getLogger(__name__)

#: Most jobs one pass handles in each of its three steps, so a pass stays short after an
#: outage; the next pass takes the rest.
SWEEP_LIMIT = 5000

#: Reasons of a send, the ``reason`` label of ``slotq_sweeper_requeued_total``.
REASONS = ("lease_expired", "never_sent", "message_lost")


@dataclass
class SweepReport:
    """Outcome of one pass: job ids sent per reason, jobs failed after their last attempt, errors."""

    sent: dict[str, list[str]] = field(default_factory=lambda: {reason: [] for reason in REASONS})
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the pass sent, failed or missed anything."""
        return bool(self.failed or self.errors or any(self.sent.values()))

    def summary(self) -> str:
        """Return one log line with the counts per reason, the failures and the errors."""
        counts = ", ".join(f"{reason} {len(ids)}" for reason, ids in self.sent.items())
        text = f"sent: {counts}; failed after the last attempt: {len(self.failed)}"
        if self.errors:
            text += "; errors: " + "; ".join(self.errors)
        return text


class SweeperMetrics:
    """Counters of the sweeper, in their own registry so tests can read them one by one."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.sent = Counter(
            "slotq_sweeper_requeued", "Jobs the sweeper sent to the broker, by reason.", ["reason"],
            registry=self.registry,
        )
        self.failed = Counter(
            "slotq_sweeper_failed", "Jobs the sweeper failed after their last attempt.", registry=self.registry
        )
        self.errors = Counter("slotq_sweeper_errors", "Sweeper passes that hit an error.", registry=self.registry)
        self.passes = Counter("slotq_sweeper_passes", "Sweeper passes run.", registry=self.registry)

    def record(self, report: SweepReport) -> None:
        """Add one pass's report to the counters."""
        self.passes.inc()
        for reason, ids in report.sent.items():
            self.sent.labels(reason=reason).inc(len(ids))
        self.failed.inc(len(report.failed))
        if report.errors:
            self.errors.inc()


class Sweeper:
    """Runs sweep passes against one store and one broker.

    Args:
        repository: the job store.
        enqueue: sends one job (`api.enqueue.make_celery_enqueue`).
        queue_depth: returns the messages waiting in the job queue; it may raise when the broker
            is down, and the pass then skips step 3.
        settings: ``enqueue_grace_s`` and ``max_attempts`` are read.
    """

    def __init__(
        self,
        repository: JobRepository,
        enqueue: Enqueue,
        queue_depth: Callable[[], int],
        settings: Settings,
        metrics: SweeperMetrics | None = None,
    ):
        self.repository = repository
        self.enqueue = enqueue
        self.queue_depth = queue_depth
        self.settings = settings
        self.metrics = metrics or SweeperMetrics()
        # Jobs the last pass found without a message; sent if this pass finds them again.
        self._missing: set[str] = set()

    def sweep_once(self) -> SweepReport:
        """Run one pass of the three steps in the module docstring and return what it did."""
        report = SweepReport()

        expired = self.repository.requeue_expired(self.settings.max_attempts, SWEEP_LIMIT)
        report.failed.extend(expired.failed)
        self._send(expired.requeued, "lease_expired", report)

        cutoff = self.repository.now() - timedelta(seconds=self.settings.enqueue_grace_s)
        just_sent = set(expired.requeued)
        unsent = self.repository.unsent_jobs(cutoff, SWEEP_LIMIT)
        self._send([job_id for job_id in unsent if job_id not in just_sent], "never_sent", report)

        self._resend_lost(cutoff, report)

        self.metrics.record(report)
        return report

    def run(self, stop: threading.Event) -> None:
        """Run passes every ``settings.sweep_interval_s`` seconds until ``stop`` is set.

        An error in a pass (the database is down, say) is logged and the next pass tries again.
        """
        logger.info(
            "sweeper started: pass every %.1f s, lease %.1f s, at most %d attempts, send grace %.1f s",
            self.settings.sweep_interval_s, self.settings.lease_s, self.settings.max_attempts,
            self.settings.enqueue_grace_s,
        )
        while not stop.is_set():
            self._logged_pass()
            stop.wait(self.settings.sweep_interval_s)
        logger.info("sweeper stopped")

    def _logged_pass(self) -> None:
        try:
            report = self.sweep_once()
        except Exception as error:
            self.metrics.errors.inc()
            logger.warning("sweep pass failed: %s: %s; retrying next pass", type(error).__name__, error)
            return
        if report.changed:
            logger.info("sweep pass: %s", report.summary())

    def _resend_lost(self, cutoff, report: SweepReport) -> None:
        try:
            waiting = self.queue_depth()
        except Exception as error:
            report.errors.append(f"queue depth unknown ({type(error).__name__}: {error}); lost messages not checked")
            return

        missing_count = self.repository.count_sent_queued(cutoff) - waiting
        missing = []
        if missing_count > 0:
            missing = self.repository.oldest_sent_queued(cutoff, min(missing_count, SWEEP_LIMIT))
        confirmed = [job_id for job_id in missing if job_id in self._missing]
        self._missing = set(missing) - set(confirmed)
        if not confirmed:
            return

        logger.warning(
            "%d queued jobs have had no message in the broker for two passes (the broker lost messages); "
            "sending them again", len(confirmed),
        )
        self._send(confirmed, "message_lost", report)

    def _send(self, job_ids: Sequence[str], reason: str, report: SweepReport) -> None:
        try:
            sent = send_recorded(self.enqueue, self.repository, job_ids)
        except PartialSendError as error:
            report.errors.append(f"{reason}: {error}")
            sent = error.sent
        report.sent[reason].extend(job_ids[:sent])


def run_sweeper_process(settings: Settings) -> int:
    """Run the sweeper in this process until SIGINT or SIGTERM (``slotq sweeper``); return 0."""
    from api.enqueue import make_celery_enqueue
    from slotq.broker import queue_depth
    from slotq.store import make_engine

    sweeper = Sweeper(
        JobRepository(make_engine(settings.database_url)),
        make_celery_enqueue(settings),
        lambda: queue_depth(settings.broker_url, settings.queue),
        settings,
    )
    if settings.sweeper_metrics_port:
        serve_metrics(
            sweeper.metrics.registry, settings.sweeper_metrics_port, "sweeper", "SLOTQ_SWEEPER_METRICS_PORT"
        )

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sweeper.run(stop)
    return 0

