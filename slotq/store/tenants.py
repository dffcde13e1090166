"""Tenants and API keys in the job store, and the queue counts that operators read.

`TenantStoreMixin` adds these methods to `slotq.store.repository.JobRepository`. Keys arrive
here already hashed: generating, hashing and checking keys is `slotq.keys`'s work.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from slotq.store.models import STATUSES, ApiKey, Job, JobStatus, Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantRecord:
    """A tenant as stored."""

    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored, with its tenant's name; ``key_hash`` is the hex SHA-256 of the key."""

    id: str
    tenant_id: str
    tenant_name: str
    prefix: str
    key_hash: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class TenantCounts:
    """Jobs of one tenant per status (every status present); tenant_id None for ownerless jobs."""

    tenant_id: str | None
    tenant_name: str | None
    by_status: dict[str, int]


class TenantStoreMixin:
    """Tenant, API key and queue-count methods of `JobRepository`; they use its ``_sessions``."""

    def get_or_create_tenant(self, name: str) -> TenantRecord:
        """Return the tenant called ``name``, creating it when missing (safe when two callers race)."""
        existing = self._find_tenant(name)
        if existing is not None:
            return existing

        tenant = Tenant(id=str(uuid.uuid4()), name=name, created_at=self._clock())
        try:
            with self._sessions.begin() as session:
                session.add(tenant)
        except IntegrityError:
            # Another process created the same tenant between the read and the insert.
            existing = self._find_tenant(name)
            if existing is None:
                raise
            return existing

        logger.info("tenant_id=%s tenant %r created", tenant.id, name)
        return TenantRecord(tenant.id, tenant.name, tenant.created_at)

    def create_api_key(self, tenant_name: str, prefix: str, key_hash: str, admin: bool = False) -> ApiKeyRecord:
        """Store a new key of ``tenant_name`` (created when missing) and return it."""
        tenant = self.get_or_create_tenant(tenant_name)
        key = ApiKey(
            id=str(uuid.uuid4()),
            tenant_id=tenant.id,
            prefix=prefix,
            key_hash=key_hash,
            admin=admin,
            created_at=self._clock(),
            revoked_at=None,
        )
        with self._sessions.begin() as session:
            session.add(key)

        logger.info("tenant_id=%s api_key_id=%s key created, admin=%s", tenant.id, key.id, admin)
        return _key_record(key, tenant.name)

    def find_api_keys(self, prefix: str) -> list[ApiKeyRecord]:
        """Return the keys that start with ``prefix`` and are not revoked."""
        query = (
            select(ApiKey, Tenant.name)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        )
        with self._sessions() as session:
            return [_key_record(key, name) for key, name in session.execute(query)]

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Return every key, revoked ones included, oldest first."""
        query = (
            select(ApiKey, Tenant.name)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .order_by(ApiKey.created_at, ApiKey.id)
        )
        with self._sessions() as session:
            return [_key_record(key, name) for key, name in session.execute(query)]

    def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key; False when no key has ``key_id`` or it was already revoked."""
        statement = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=self._clock())
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            revoked = session.execute(statement).rowcount == 1

        if revoked:
            logger.info("api_key_id=%s key revoked", key_id)
        return revoked

    def queued_job_count(self) -> int:
        """Return the number of queued jobs across all tenants."""
        with self._sessions() as session:
            return session.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED.value))

    def job_counts_by_tenant(self) -> list[TenantCounts]:
        """Return the jobs of every tenant per status, tenants by name, ownerless jobs last."""
        query = (
            select(Job.tenant_id, Tenant.name, Job.status, func.count())
            .outerjoin(Tenant, Tenant.id == Job.tenant_id)
            .group_by(Job.tenant_id, Tenant.name, Job.status)
        )
        counts: dict[str | None, TenantCounts] = {}
        with self._sessions() as session:
            for tenant_id, name, status, count in session.execute(query):
                entry = counts.setdefault(tenant_id, TenantCounts(tenant_id, name, dict.fromkeys(STATUSES, 0)))
                entry.by_status[status] = count

        return sorted(counts.values(), key=lambda entry: (entry.tenant_name is None, entry.tenant_name or ""))

    def _find_tenant(self, name: str) -> TenantRecord | None:
        with self._sessions() as session:
            tenant = session.scalar(select(Tenant).where(Tenant.name == name))
            return TenantRecord(tenant.id, tenant.name, tenant.created_at) if tenant is not None else None


def _key_record(key: ApiKey, tenant_name: str) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key.id,
        tenant_id=key.tenant_id,
        tenant_name=tenant_name,
        prefix=key.prefix,
        key_hash=key.key_hash,
        admin=key.admin,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )
