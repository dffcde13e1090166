"""Idempotency keys of submits, and the queue-depth limit checked in the same transactions.

A submit with an ``Idempotency-Key`` stores its response in the transaction that stores its job
or batch. The primary key (tenant_id, key) of ``idempotency_keys`` decides races: when two
submits with one key run at once, the second transaction fails on that key and rolls back its
own job or batch, and `IdempotencyKeyExistsError` hands it the first response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from slotq import SlotqError
from slotq.store.models import IdempotencyRecord, Job, JobStatus


@dataclass(frozen=True)
class IdempotencyClaim:
    """What a submit with an ``Idempotency-Key`` stores: the tenant, the key, the request hash.

    Attributes:
        request_hash: hex SHA-256 of what was submitted, which a replay must match; or a function
            returning it, called when the response is stored (after a streamed upload was read).
        ttl_s: seconds the response is kept.
        response_body: builds the stored response body from the new job's or batch's record.
    """

    tenant_id: str
    key: str
    request_hash: str | Callable[[], str]
    ttl_s: int
    response_body: Callable[[Any], dict[str, Any]]

    def resolved_hash(self) -> str:
        """Return ``request_hash``, calling it first when it is a function."""
        return self.request_hash() if callable(self.request_hash) else self.request_hash


@dataclass(frozen=True)
class StoredResponse:
    """The first response to a submit with an idempotency key."""

    key: str
    request_hash: str
    resource_type: str
    resource_id: str
    status_code: int
    body: dict[str, Any]
    expires_at: datetime


class IdempotencyKeyExistsError(SlotqError):
    """Another submit stored a response under the same key first; ``stored`` is that response."""

    def __init__(self, stored: StoredResponse):
        super().__init__(f"idempotency key {stored.key!r} is already used by {stored.resource_type} {stored.resource_id}")
        self.stored = stored


class QueueFullError(SlotqError):
    """A submit would push the queued jobs across all tenants past ``SLOTQ_MAX_QUEUED_JOBS``."""

    def __init__(self, queued: int, adding: int, limit: int):
        super().__init__(
            f"the queue holds {queued} queued jobs and this submit adds {adding}, past the limit of "
            f"{limit} (SLOTQ_MAX_QUEUED_JOBS); retry later"
        )
        self.queued = queued
        self.adding = adding
        self.limit = limit


class IdempotencyStoreMixin:
    """Idempotency methods of `JobRepository`; they use its ``_sessions`` and ``_clock``."""

    def find_stored_response(self, tenant_id: str, key: str) -> StoredResponse | None:
        """Return the unexpired response stored under (``tenant_id``, ``key``), or None."""
        query = select(IdempotencyRecord).where(
            IdempotencyRecord.tenant_id == tenant_id,
            IdempotencyRecord.key == key,
            IdempotencyRecord.expires_at > self._clock(),
        )
        with self._sessions() as session:
            row = session.scalar(query)
            return _stored_response(row) if row is not None else None

    def delete_expired_idempotency_keys(self) -> int:
        """Delete every expired idempotency key and return how many there were."""
        statement = delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= self._clock())
        with self._sessions.begin() as session:
            return session.execute(statement).rowcount

    def _store_response(
        self, session, claim: IdempotencyClaim, resource_type: str, resource_id: str, record: Any
    ) -> None:
        """Add the claim's response to ``session``; an expired row with the same key is replaced."""
        now = self._clock()
        session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == claim.tenant_id,
                IdempotencyRecord.key == claim.key,
                IdempotencyRecord.expires_at <= now,
            )
        )
        session.add(
            IdempotencyRecord(
                tenant_id=claim.tenant_id,
                key=claim.key,
                request_hash=claim.resolved_hash(),
                resource_type=resource_type,
                resource_id=resource_id,
                status_code=202,
                response_body=claim.response_body(record),
                created_at=now,
                expires_at=now + timedelta(seconds=claim.ttl_s),
            )
        )
        session.flush()

    def _raise_if_claimed(self, error: IntegrityError, claim: IdempotencyClaim | None) -> None:
        """Turn a lost race on ``claim``'s key into `IdempotencyKeyExistsError`; else re-raise."""
        if claim is None:
            raise error
        stored = self.find_stored_response(claim.tenant_id, claim.key)
        if stored is None:
            raise error
        raise IdempotencyKeyExistsError(stored) from error


def check_queue_depth(session, adding: int, limit: int | None) -> None:
    """Raise `QueueFullError` when the session's queued jobs, its own new ones included, pass ``limit``.

    NOTE: two submits that commit at the same moment may each see the other's jobs as absent,
    so the queue can pass the limit by the size of the concurrent submits.
    """
    if limit is None:
        return
    queued = session.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED.value))
    if queued > limit:
        raise QueueFullError(queued - adding, adding, limit)


def _stored_response(row: IdempotencyRecord) -> StoredResponse:
    return StoredResponse(
        key=row.key,
        request_hash=row.request_hash,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        status_code=row.status_code,
        body=row.response_body,
        expires_at=row.expires_at,
    )
