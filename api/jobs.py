"""Routes under ``/v1/jobs``: submit, read, list and cancel jobs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from api.auth import current_principal
from api.backpressure import check_queue_room, queue_full
from api.enqueue import send_recorded
from api.errors import ApiError
from api.idempotency import idempotency_key, json_request_hash, replay
from api.state import current_state
from api.views import job_detail, job_summary, job_url
from slotq.logging import with_ids
from slotq.requests import RequestValidationError, parse_job_request
from slotq.store import (
    STATUSES,
    CancelResult,
    IdempotencyClaim,
    IdempotencyKeyExistsError,
    InvalidCursorError,
    JobRecord,
    QueueFullError,
)

logger = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

#: Job ids are lowercase UUIDs in the canonical 8-4-4-4-12 form.
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LIST_PARAMETERS = ("status", "limit", "cursor", "overfit")
#: Values of the ``overfit`` query parameter; any other value gets 422.
OVERFIT_VALUES = {"true": True, "false": False}


@blueprint.post("")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    """Validate a job request, store it as queued and send it to the workers.

    A repeated ``Idempotency-Key`` returns the first response instead (see `api.idempotency`).
    """
    state = current_state()
    tenant_id = current_principal().tenant_id
    key = idempotency_key()
    body = _read_json_body()

    claim = None
    if key is not None:
        request_hash = json_request_hash(body)
        stored = state.repository.find_stored_response(tenant_id, key)
        if stored is not None:
            return replay(stored, request_hash)
        claim = IdempotencyClaim(tenant_id, key, request_hash, state.settings.idempotency_ttl_s, _accepted_body)

    check_queue_room()
    try:
        job_request = parse_job_request(body, state.settings)
    except RequestValidationError as error:
        raise ApiError(422, "validation_failed", "the job request is invalid", error.errors) from error

    try:
        job = state.repository.create_job(
            job_request,
            state.settings.model_name,
            tenant_id=tenant_id,
            idempotency=claim,
            max_queued_jobs=state.settings.max_queued_jobs,
        )
    except IdempotencyKeyExistsError as error:
        return replay(error.stored, request_hash)
    except QueueFullError as error:
        raise queue_full(error) from error

    log = with_ids(logger, job_id=job.id, request_id=g.request_id, tenant_id=tenant_id)
    try:
        send_recorded(state.enqueue, state.repository, [job.id])
    except Exception:
        # The job is committed, so returning 500 would make the client submit it twice. Any
        # error here, not only a broker outage, leaves the job queued and accepted; the
        # sweeper sends it once SLOTQ_ENQUEUE_GRACE_S has passed.
        log.warning("job stored but not sent to the broker; the sweeper will send it", exc_info=True)
    else:
        log.info("job accepted and sent to queue %s", state.settings.queue)

    body = _accepted_body(job)
    return jsonify(body), 202, {"Location": body["url"]}


@blueprint.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """Return one job with its request, timestamps, timings and result."""
    job = current_state().repository.get_job(_checked_job_id(job_id), tenant_id=current_principal().tenant_id)
    if job is None:
        raise _job_not_found(job_id)
    return jsonify(job_detail(job))


@blueprint.get("")
def list_jobs() -> Response:
    """Return a page of jobs, newest first, optionally of one status or over-fitting flag."""
    state = current_state()
    status, limit, cursor, overfit = _list_parameters(
        state.settings.default_page_size, state.settings.max_page_size
    )
    try:
        jobs, next_cursor = state.repository.list_jobs(
            status=status, cursor=cursor, limit=limit, overfit=overfit, tenant_id=current_principal().tenant_id
        )
    except InvalidCursorError as error:
        raise ApiError(
            422,
            "validation_failed",
            "the cursor is invalid",
            [{"field": "cursor", "value": cursor, "message": "must be a next_cursor from a previous page"}],
        ) from error
    return jsonify({"jobs": [job_summary(job) for job in jobs], "next_cursor": next_cursor})


@blueprint.delete("/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel a queued job; a running or finished job gets 409 and is left as it is."""
    outcome = current_state().repository.cancel_job(_checked_job_id(job_id), tenant_id=current_principal().tenant_id)
    log = with_ids(logger, job_id=job_id, request_id=g.request_id)

    if outcome.result is CancelResult.NOT_FOUND:
        raise _job_not_found(job_id)
    if outcome.result is CancelResult.RUNNING:
        log.info("cancel rejected: job is running")
        raise ApiError(
            409,
            "job_running",
            f"job {job_id} is already running and cannot be cancelled; it will finish and "
            "store its result",
            [{"field": "status", "value": "running", "message": "only queued jobs can be cancelled"}],
        )
    if outcome.result is CancelResult.FINISHED:
        status = outcome.job.status
        raise ApiError(
            409,
            "job_finished",
            f"job {job_id} has already finished with status {status}; there is nothing to cancel",
            [{"field": "status", "value": status, "message": "only queued jobs can be cancelled"}],
        )

    log.info("job cancelled")
    return jsonify(job_detail(outcome.job))


def _accepted_body(job: JobRecord) -> dict[str, Any]:
    return {"id": job.id, "status": job.status, "url": job_url(job.id)}


def _read_json_body() -> Any:
    """Return the decoded JSON body, or raise 415 or 400 naming what is wrong."""
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {request.content_type or 'missing'}",
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type", f"charset must be utf-8, not {charset}")

    raw = _read_body_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(
            400, "invalid_body", f"request body is not valid UTF-8: invalid byte at offset {error.start}"
        ) from error

    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "invalid_body",
            f"request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from error
    except (RecursionError, ValueError) as error:
        # ValueError: an integer with more digits than Python converts (4300 by default).
        raise ApiError(400, "invalid_body", f"request body is not acceptable JSON: {error}") from error


def _read_body_bytes() -> bytes:
    """Return the request body, raising 413 when it exceeds MAX_CONTENT_LENGTH.

    Werkzeug raises 413 itself when Content-Length is too large. A chunked body has no
    Content-Length, and Werkzeug silently cuts it at the limit, so one more byte is read from
    the server's input to tell a body of exactly the limit from a longer one.
    """
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return raw


def _list_parameters(
    default_limit: int, max_limit: int
) -> tuple[str | None, int, str | None, bool | None]:
    errors = []
    for name in request.args:
        if name not in LIST_PARAMETERS:
            errors.append(
                {
                    "field": name,
                    "value": request.args[name],
                    "message": "unknown query parameter; allowed: " + ", ".join(LIST_PARAMETERS),
                }
            )
        elif len(request.args.getlist(name)) > 1:
            errors.append({"field": name, "value": request.args.getlist(name), "message": "must be given once"})

    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        errors.append({"field": "status", "value": status, "message": "must be one of " + ", ".join(STATUSES)})

    limit_text = request.args.get("limit")
    limit = default_limit
    if limit_text is not None:
        if re.fullmatch(r"[0-9]{1,6}", limit_text) and 1 <= int(limit_text) <= max_limit:
            limit = int(limit_text)
        else:
            errors.append(
                {"field": "limit", "value": limit_text, "message": f"must be an integer between 1 and {max_limit}"}
            )

    overfit_text = request.args.get("overfit")
    if overfit_text is not None and overfit_text not in OVERFIT_VALUES:
        errors.append({"field": "overfit", "value": overfit_text, "message": "must be true or false"})

    if errors:
        raise ApiError(422, "validation_failed", "the query parameters are invalid", errors)
    return status, limit, request.args.get("cursor"), OVERFIT_VALUES.get(overfit_text)


def _checked_job_id(job_id: str) -> str:
    """Return ``job_id`` in canonical form, or raise 404 for anything that is not a job id."""
    if not JOB_ID_PATTERN.fullmatch(job_id.lower()):
        raise _job_not_found(job_id)
    return job_id.lower()


def _job_not_found(job_id: str) -> ApiError:
    display_id = job_id if len(job_id) <= 64 else job_id[:64] + "…"
    return ApiError(404, "job_not_found", f"no job with id {display_id!r}")
