"""The ``slotq purge`` command: remove prompts, outputs and δ of old jobs, keep their metrics.

``slotq purge --older-than DAYS`` purges jobs that finished more than DAYS days ago (see
`slotq.store.purge` for what is removed and what stays), removes the validation prompts of
batches finished as long ago, and deletes expired idempotency keys. It prints the counts, shows
a progress bar on stderr for large purges, and is safe to rerun: purged jobs are skipped.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import timedelta

from tqdm import tqdm

from slotq import SlotqError
from slotq.settings import load_settings
from slotq.store import JobRepository, make_engine

#: Largest ``--older-than``: 100 years.
MAX_DAYS = 36_500
#: Purges of at least this many jobs show a progress bar.
PROGRESS_MIN_JOBS = 1000
EXIT_USAGE = 2


class PurgeError(SlotqError, ValueError):
    """An argument of the purge is invalid; the message names it and the allowed range."""


@dataclass(frozen=True)
class PurgeSummary:
    """Counts of one purge; with ``dry_run`` they are what a purge would remove."""

    jobs: int
    batches: int
    idempotency_keys: int
    dry_run: bool


def purge(
    older_than_days: float,
    dry_run: bool = False,
    *,
    repository: JobRepository | None = None,
    progress: bool = True,
) -> PurgeSummary:
    """Purge jobs and batches finished more than ``older_than_days`` days ago.

    Args:
        older_than_days: age in days, 0 to `MAX_DAYS`; 0 purges every finished job.
        dry_run: count only, change nothing.
        repository: store to purge; default the one on ``SLOTQ_DATABASE_URL``.
        progress: show a progress bar on stderr when at least `PROGRESS_MIN_JOBS` jobs go.

    Raises:
        PurgeError: ``older_than_days`` is out of range.
    """
    if not 0 <= older_than_days <= MAX_DAYS:
        raise PurgeError(f"invalid --older-than={older_than_days!r}: must be a number of days between 0 and {MAX_DAYS}")

    engine = None
    if repository is None:
        engine = make_engine(load_settings().database_url)
        repository = JobRepository(engine)
    try:
        return _purge(repository, repository.now() - timedelta(days=older_than_days), dry_run, progress)
    finally:
        if engine is not None:
            engine.dispose()


def add_purge_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``purge`` on the ``slotq`` command's subparsers."""
    parser = subparsers.add_parser(
        "purge",
        help="delete prompts, outputs and deltas of old jobs, keeping their metrics",
        description="Delete the prompts, messages, outputs, parsed outputs and deltas of jobs that "
        "finished more than DAYS days ago, keeping timings, token counts, delta norms, losses and "
        "flags. Also removes validation prompts of old batches and expired idempotency keys.",
    )
    parser.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days since the job finished")
    parser.add_argument("--dry-run", action="store_true", help="print what would be purged and change nothing")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_run_purge)


def _purge(repository: JobRepository, cutoff, dry_run: bool, progress: bool) -> PurgeSummary:
    jobs = repository.count_purgeable_jobs(cutoff)
    batches = repository.count_purgeable_batches(cutoff)
    if dry_run:
        return PurgeSummary(jobs=jobs, batches=batches, idempotency_keys=0, dry_run=True)

    show = progress and jobs >= PROGRESS_MIN_JOBS
    with tqdm(total=jobs, unit="job", desc="purge", disable=not show, file=sys.stderr) as bar:
        jobs = repository.purge_jobs(cutoff, on_chunk=bar.update)
    batches = repository.purge_batches(cutoff)
    keys = repository.delete_expired_idempotency_keys()
    return PurgeSummary(jobs=jobs, batches=batches, idempotency_keys=keys, dry_run=False)


def _run_purge(args: argparse.Namespace) -> int:
    try:
        summary = purge(args.older_than, args.dry_run, progress=not args.no_progress)
    except PurgeError as error:
        print(f"slotq purge: {error}", file=sys.stderr)
        return EXIT_USAGE

    if summary.dry_run:
        print(f"dry run: would purge {summary.jobs} jobs and {summary.batches} batches finished more than {args.older_than:g} days ago")
    else:
        print(
            f"purged {summary.jobs} jobs and {summary.batches} batches finished more than {args.older_than:g} days ago; "
            f"deleted {summary.idempotency_keys} expired idempotency keys"
        )
    return 0
