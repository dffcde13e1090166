"""Operations routes under ``/v1/admin``, for admin keys only (others get 403)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import require_admin
from api.state import current_state
from api.views import format_time
from slotq.store import STATUSES, JobStatus

blueprint = Blueprint("admin", __name__, url_prefix="/v1/admin")


@blueprint.get("/queue")
def queue() -> Response:
    """Return the queue depth, its limit, and job counts per status, overall and per tenant."""
    require_admin()
    state = current_state()
    tenants = state.repository.job_counts_by_tenant()

    totals = dict.fromkeys(STATUSES, 0)
    for entry in tenants:
        for status, count in entry.by_status.items():
            totals[status] += count

    return jsonify(
        {
            "queued": totals[JobStatus.QUEUED.value],
            "max_queued_jobs": state.settings.max_queued_jobs,
            "counts": totals,
            "tenants": [
                {"tenant_id": entry.tenant_id, "tenant": entry.tenant_name, "counts": entry.by_status}
                for entry in tenants
            ],
        }
    )


@blueprint.get("/keys")
def keys() -> Response:
    """Return every API key's id, tenant, prefix, role and dates; never a key or its hash."""
    require_admin()
    records = current_state().repository.list_api_keys()
    return jsonify(
        {
            "keys": [
                {
                    "id": record.id,
                    "tenant_id": record.tenant_id,
                    "tenant": record.tenant_name,
                    "prefix": record.prefix,
                    "admin": record.admin,
                    "created_at": format_time(record.created_at),
                    "revoked_at": format_time(record.revoked_at),
                }
                for record in records
            ]
        }
    )
