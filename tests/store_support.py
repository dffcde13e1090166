"""Helpers for tests that drive the job store directly: a settable clock and job requests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from slotq.requests import JobRequest, parse_job_request
from slotq.settings import Settings
from slotq.store import JobRepository

SETTINGS = Settings(data_dir="/nonexistent/slotq-tests")


class FakeClock:
    """Clock that returns a fixed UTC time, changed only by `advance`."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_request(prompt: str = "Hello", **extra: object) -> JobRequest:
    return parse_job_request({"prompt": prompt, **extra}, SETTINGS)


def with_clock(repository: JobRepository) -> tuple[JobRepository, FakeClock]:
    """Return a repository on ``repository``'s engine that reads time from a new `FakeClock`."""
    clock = FakeClock()
    return JobRepository(repository.engine, clock=clock), clock
