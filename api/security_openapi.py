"""OpenAPI parts of authentication, rate limits, idempotency and the admin routes.

`add_security` runs last on the whole document: it marks the public operations, declares the
key schemes, and adds the 401, 403, 409 and 429 responses and the ``Idempotency-Key`` header to
the operations that have them.
"""

from __future__ import annotations

from typing import Any

from api.auth import API_KEY_HEADER
from api.idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER
from slotq.settings import Settings
from slotq.store import STATUSES

PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json")
SUBMIT_OPERATIONS = ("submitJob", "submitBatch")
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}
    if headers:
        response["headers"] = headers
    return response


def admin_paths() -> dict[str, Any]:
    """Return the ``/v1/admin`` paths."""
    default = {"$ref": "#/components/responses/UnexpectedError"}
    return {
        "/v1/admin/queue": {
            "get": {
                "operationId": "adminQueue",
                "summary": "Queue depth and job counts per status, overall and per tenant (admin keys only)",
                "responses": {
                    "200": {"description": "Queue counts.", "content": {"application/json": {"schema": _ref("AdminQueue")}}},
                    "default": default,
                },
            }
        },
        "/v1/admin/keys": {
            "get": {
                "operationId": "adminKeys",
                "summary": "Every API key's id, tenant, prefix, role and dates (admin keys only)",
                "responses": {
                    "200": {"description": "The keys.", "content": {"application/json": {"schema": _ref("AdminKeys")}}},
                    "default": default,
                },
            }
        },
    }


def admin_schemas() -> dict[str, Any]:
    """Return the component schemas of the admin routes."""
    counts = {
        "type": "object",
        "required": list(STATUSES),
        "properties": {status: {"type": "integer", "minimum": 0} for status in STATUSES},
    }
    nullable_string = {"type": ["string", "null"]}
    return {
        "AdminQueue": {
            "type": "object",
            "required": ["queued", "max_queued_jobs", "counts", "tenants"],
            "properties": {
                "queued": {"type": "integer", "minimum": 0, "description": "Queued jobs across all tenants."},
                "max_queued_jobs": {"type": "integer", "description": "Limit above which submits get 429."},
                "counts": counts,
                "tenants": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["tenant_id", "tenant", "counts"],
                        "properties": {
                            "tenant_id": {**nullable_string, "description": "null for jobs stored before tenants existed."},
                            "tenant": nullable_string,
                            "counts": counts,
                        },
                    },
                },
            },
        },
        "AdminKeys": {
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "tenant_id", "tenant", "prefix", "admin", "created_at", "revoked_at"],
                        "properties": {
                            "id": {"type": "string"},
                            "tenant_id": {"type": "string"},
                            "tenant": {"type": "string"},
                            "prefix": {"type": "string", "description": "First characters of the key."},
                            "admin": {"type": "boolean"},
                            "created_at": {"type": "string", "format": "date-time"},
                            "revoked_at": {"type": ["string", "null"], "format": "date-time"},
                        },
                    },
                }
            },
        },
    }


def add_security(document: dict[str, Any], settings: Settings) -> None:
    """Add key schemes, per-operation security and the auth, limit and idempotency responses."""
    document["components"]["securitySchemes"] = {
        "bearerKey": {"type": "http", "scheme": "bearer", "description": "An API key from 'slotq keys create'."},
        "headerKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
    }
    document["security"] = [{"bearerKey": []}, {"headerKey": []}]
    if settings.auth == "disabled":
        document["info"]["description"] += " This deployment runs with SLOTQ_AUTH=disabled: no key is needed."

    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            if path in PUBLIC_PATHS:
                operation["security"] = []
                continue
            _add_protected_responses(operation, settings)
            if path.startswith("/v1/admin/"):
                operation["responses"]["403"] = _error("The key is not an admin key.")
            if operation["operationId"] in SUBMIT_OPERATIONS:
                _add_idempotency(operation, settings)


def _add_protected_responses(operation: dict[str, Any], settings: Settings) -> None:
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
    challenge = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge."}}
    operation["responses"]["401"] = _error("API key missing, invalid or revoked.", challenge)
    operation["responses"]["429"] = _error(
        f"Rate limit of the key exceeded ({settings.rate_limit_per_minute} per minute, bursts of "
        f"{settings.rate_limit_burst}; 0 per minute means no limit), or for submits the queue holds "
        f"{settings.max_queued_jobs} queued jobs (code queue_full).",
        retry_after,
    )


def _add_idempotency(operation: dict[str, Any], settings: Settings) -> None:
    operation.setdefault("parameters", []).append(
        {
            "name": IDEMPOTENCY_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
            "description": (
                f"Repeating a submit with the same key and request within {settings.idempotency_ttl_s} s "
                f"returns the first response with {REPLAYED_HEADER}: true, and stores nothing new. The "
                "same key with another request gets 409. Keys are per tenant."
            ),
        }
    )
    accepted = operation["responses"]["202"]
    accepted.setdefault("headers", {})[REPLAYED_HEADER] = {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present when this is the stored response of an earlier submit with the same key.",
    }
    operation["responses"]["409"] = _error(f"The {IDEMPOTENCY_HEADER} was already used for another request.")
