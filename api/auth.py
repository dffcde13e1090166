"""Authentication of API requests by key, and the tenant each request acts for.

A request sends its key as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Every route
needs one except the probes, the OpenAPI document and ``/metrics``. A missing, unknown or
revoked key gets 401 with a ``WWW-Authenticate`` header. With ``SLOTQ_AUTH=disabled`` (unsafe,
local use only) every request acts as the admin of the tenant `LOCAL_TENANT`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Response, current_app, g, request

from api.errors import ApiError, error_response
from api.state import current_state
from slotq.keys import verify_key
from slotq.logging import with_ids

logger = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "Authorization"
API_KEY_HEADER = "X-API-Key"
#: Endpoints that need no key: liveness, readiness, the OpenAPI document and the
#: Prometheus metrics, which contain aggregate numbers only and no tenant data.
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "openapi.openapi_json", "metrics.metrics"})
#: Tenant that every request acts for when ``SLOTQ_AUTH=disabled``.
LOCAL_TENANT = "local"
_LOCAL_PRINCIPAL_KEY = "slotq_local_principal"


@dataclass(frozen=True)
class Principal:
    """Who sends a request: the tenant it acts for, the key it used and whether it is an admin.

    ``key_id`` is None when authentication is disabled.
    """

    tenant_id: str
    tenant_name: str
    key_id: str | None
    admin: bool

    @property
    def rate_limit_id(self) -> str:
        """Identity that the rate limit counts requests under."""
        return self.key_id or f"tenant:{self.tenant_id}"


def authenticate() -> Response | None:
    """Set ``g.principal`` for the request, or return the 401 response (a ``before_request`` hook)."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None

    state = current_state()
    if state.settings.auth == "disabled":
        g.principal = _local_principal()
        return None

    presented = _presented_key()
    if presented is None:
        return _unauthorized(
            f"missing API key: send 'Authorization: Bearer KEY' or '{API_KEY_HEADER}: KEY' "
            "with a key from 'slotq keys create'",
            invalid=False,
        )

    key = verify_key(state.repository, presented)
    if key is None:
        with_ids(logger, request_id=g.get("request_id")).warning("request rejected: invalid or revoked API key")
        return _unauthorized("invalid or revoked API key", invalid=True)

    g.principal = Principal(tenant_id=key.tenant_id, tenant_name=key.tenant_name, key_id=key.id, admin=key.admin)
    return None


def current_principal() -> Principal:
    """Return the principal of the current request; only valid on routes that need a key."""
    return g.principal


def require_admin() -> Principal:
    """Return the principal, or raise 403 when its key is not an admin key."""
    principal = current_principal()
    if not principal.admin:
        raise ApiError(
            403,
            "forbidden",
            "this endpoint needs an admin key; create one with 'slotq keys create --tenant NAME --admin'",
        )
    return principal


def _presented_key() -> str | None:
    authorization = request.headers.get(AUTHORIZATION_HEADER, "").strip()
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return ""
    api_key = request.headers.get(API_KEY_HEADER, "").strip()
    return api_key if api_key else None


def _unauthorized(message: str, invalid: bool) -> Response:
    response = error_response(401, "unauthorized", message)
    challenge = 'Bearer realm="slot-queue"'
    if invalid:
        challenge += ', error="invalid_token"'
    response.headers["WWW-Authenticate"] = challenge
    return response


def _local_principal() -> Principal:
    """Return the admin principal of `LOCAL_TENANT`, creating the tenant on first use."""
    principal = current_app.extensions.get(_LOCAL_PRINCIPAL_KEY)
    if principal is None:
        tenant = current_state().repository.get_or_create_tenant(LOCAL_TENANT)
        principal = Principal(tenant_id=tenant.id, tenant_name=tenant.name, key_id=None, admin=True)
        current_app.extensions[_LOCAL_PRINCIPAL_KEY] = principal
    return principal
