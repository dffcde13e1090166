"""JSON error responses: every error body is ``{"error": {"code", "message", "details", "request_id"}}``.

No response ever carries a traceback. Unexpected exceptions are logged with their traceback and
the request id, and the client gets a 500 with that request id to quote.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from slotq.logging import with_ids

logger = logging.getLogger(__name__)

#: Error codes of the HTTP errors that Werkzeug raises itself.
HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error that the API returns to the client as is.

    Args:
        status: HTTP status code.
        code: stable machine-readable error code, such as ``validation_failed``.
        message: one sentence for people, naming the value and what is allowed.
        details: per-field problems, each ``{"field", "value", "message"}``.
        headers: extra response headers, such as ``Retry-After``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    """Return the JSON error envelope with ``status``."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": details or [],
            "request_id": g.get("request_id"),
        }
    }
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that turn every error into the JSON envelope."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(OperationalError, _handle_database_error)
    app.register_error_handler(Exception, _handle_unexpected)


def _handle_api_error(error: ApiError) -> Response:
    response = error_response(error.status, error.code, error.message, error.details)
    response.headers.update(error.headers)
    return response


def _handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_ERROR_CODES.get(status, "http_error")
    message = _http_error_message(error)

    response = error_response(status, code, message)
    # 405 carries the Allow header that Werkzeug computed.
    for name, value in error.get_headers():
        if name.lower() == "allow":
            response.headers[name] = value
    return response


def _http_error_message(error: HTTPException) -> str:
    if error.code == 404:
        return f"no resource at {request.path}"
    if error.code == 405:
        allowed = ", ".join(error.valid_methods or [])
        return f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    if error.code == 413:
        limit = request.max_content_length
        return f"request body is larger than the limit of {limit} bytes (SLOTQ_MAX_BODY_BYTES)"
    return error.description or error.name


def _handle_database_error(error: OperationalError) -> Response:
    log = with_ids(logger, request_id=g.get("request_id"))
    log.warning("database unavailable during %s %s: %s", request.method, request.path, error.orig)
    response = error_response(
        503, "database_unavailable", "the job database is unavailable; retry later"
    )
    response.headers["Retry-After"] = "5"
    return response


def _handle_unexpected(error: Exception) -> Response:
    log = with_ids(logger, request_id=g.get("request_id"))
    log.error("unhandled error during %s %s", request.method, request.path, exc_info=error)
    return error_response(500, "internal_error", "internal server error; quote the request id when reporting it")
