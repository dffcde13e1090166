"""Routes under ``/v1/batches``: upload a batch, follow it, download its results, cancel it.

The upload is parsed while it is received and its jobs are inserted in one transaction (see
`slotq.batches` for the two upload forms). An upload with any invalid line is rejected as a
whole with every problem listed, unless ``skip_invalid=true``.

Results are streamed as JSONL in input order. A download contains the finished lines after
``after_line`` up to the first line that is not finished yet, so a client that resumes with
``after_line`` set to the last line it received (the ``X-Slotq-Last-Line`` header) never
misses or repeats a line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

from flask import Blueprint, Response, g, jsonify, request, stream_with_context
from werkzeug.exceptions import RequestEntityTooLarge

from api.auth import current_principal
from api.backpressure import check_queue_room, queue_full
from api.batch_views import batch_detail, batch_url, result_line, results_url
from api.enqueue import send_recorded
from api.errors import ApiError
from api.idempotency import HashingReader, idempotency_key, replay
from api.jobs import JOB_ID_PATTERN
from api.state import current_state
from slotq.batches import JSON_MEDIA_TYPE, JSONL_MEDIA_TYPES, BatchUpload, BatchUploadError
from slotq.logging import with_ids
from slotq.store import BatchRecord, IdempotencyClaim, IdempotencyKeyExistsError, QueueFullError

logger = logging.getLogger(__name__)

blueprint = Blueprint("batches", __name__, url_prefix="/v1/batches")

SUBMIT_PARAMETERS = ("skip_invalid", "file_name")
RESULTS_PARAMETERS = ("after_line",)
BOOLEAN_VALUES = {"true": True, "1": True, "false": False, "0": False}

LAST_LINE_HEADER = "X-Slotq-Last-Line"
LINE_COUNT_HEADER = "X-Slotq-Line-Count"
COMPLETE_HEADER = "X-Slotq-Results-Complete"
RESULTS_MEDIA_TYPE = "application/x-ndjson; charset=utf-8"

#: Results lines are sent in chunks of about this many bytes, not one write per line.
RESULTS_CHUNK_BYTES = 65536
#: Largest ``after_line``: past any line number an upload within the limits can have.
MAX_AFTER_LINE = 2**31 - 1


@blueprint.post("")
def submit_batch() -> tuple[Response, int, dict[str, str]]:
    """Parse an upload, store the batch and its jobs, and send the jobs to the workers.

    A repeated ``Idempotency-Key`` returns the first response instead (see `api.idempotency`).
    """
    state = current_state()
    tenant_id = current_principal().tenant_id
    limit = state.settings.max_batch_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    request.max_content_length = limit

    media_type = _upload_media_type()
    skip_invalid, file_name = _submit_parameters()
    key = idempotency_key()
    reader = HashingReader(request.stream)

    if key is not None:
        stored = state.repository.find_stored_response(tenant_id, key)
        if stored is not None:
            return replay(stored, _read_or_413(lambda: _drained_hash(reader), limit))

    check_queue_room()
    upload = BatchUpload(reader, media_type, state.settings, skip_invalid, file_name)
    claim = None
    if key is not None:
        claim = IdempotencyClaim(
            tenant_id,
            key,
            lambda: _drained_hash(reader),
            state.settings.idempotency_ttl_s,
            lambda batch: _accepted_body(batch, upload),
        )

    try:
        spec = upload.read_spec()
        batch, job_ids = state.repository.create_batch(
            spec,
            upload.lines(),
            state.settings.model_name,
            skipped_count=lambda: len(upload.skipped),
            tenant_id=tenant_id,
            idempotency=claim,
            max_queued_jobs=state.settings.max_queued_jobs,
        )
    except BatchUploadError as error:
        raise ApiError(error.status, error.code, error.message, error.details) from error
    except RequestEntityTooLarge as error:
        # A chunked body has no Content-Length, so its size is only known while reading it.
        raise _too_large(limit) from error
    except IdempotencyKeyExistsError as error:
        return replay(error.stored, _read_or_413(lambda: _drained_hash(reader), limit))
    except QueueFullError as error:
        raise queue_full(error) from error

    log = with_ids(logger, batch_id=batch.id, request_id=g.request_id, tenant_id=tenant_id)
    body = _accepted_body(batch, upload)
    response = jsonify(body)
    # The jobs are committed, so the batch is accepted before its messages go out: sending
    # thousands of messages would otherwise double the time the client waits. Messages that
    # this process fails to send (or dies before sending) are sent by the sweeper.
    response.call_on_close(lambda: _send_jobs(state, job_ids, log))
    return response, 202, {"Location": body["url"]}


def _accepted_body(batch: BatchRecord, upload: BatchUpload) -> dict:
    return {
        "id": batch.id,
        "status": batch.status,
        "url": batch_url(batch.id),
        "results_url": results_url(batch.id),
        "line_count": batch.line_count,
        "skipped_count": batch.skipped_count,
        "skipped": upload.skipped,
    }


def _drained_hash(reader: HashingReader) -> str:
    """Return the hash of the whole body; the parser may stop before the last bytes (a closing brace)."""
    reader.drain()
    return reader.hexdigest()


def _read_or_413(read, limit: int):
    """Call ``read``, turning an over-limit chunked body into the batch's 413 error."""
    try:
        return read()
    except RequestEntityTooLarge as error:
        raise _too_large(limit) from error


@blueprint.get("/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """Return the batch's status, counts, progress and estimated time left."""
    batch = current_state().repository.get_batch(_checked_batch_id(batch_id), tenant_id=current_principal().tenant_id)
    if batch is None:
        raise _batch_not_found(batch_id)
    return jsonify(batch_detail(batch))


@blueprint.get("/<batch_id>/results")
def get_results(batch_id: str) -> Response:
    """Stream the finished results in input order as JSONL, starting after ``after_line``."""
    repository = current_state().repository
    batch_id = _checked_batch_id(batch_id)
    after_line = _after_line()
    if repository.get_batch(batch_id, counts=False, tenant_id=current_principal().tenant_id) is None:
        raise _batch_not_found(batch_id)

    results_range = repository.batch_results_range(batch_id, after_line)
    results = repository.iter_batch_results(batch_id, results_range=results_range)
    headers = {
        LAST_LINE_HEADER: str(results_range.last_line if results_range.last_line is not None else after_line),
        LINE_COUNT_HEADER: str(results_range.count),
        COMPLETE_HEADER: "true" if results_range.complete else "false",
    }
    return Response(stream_with_context(_jsonl_chunks(results)), headers=headers, content_type=RESULTS_MEDIA_TYPE)


@blueprint.post("/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """Cancel the batch's queued jobs; running jobs finish and finished results are kept."""
    outcome = current_state().repository.cancel_batch(_checked_batch_id(batch_id), tenant_id=current_principal().tenant_id)
    if not outcome.found:
        raise _batch_not_found(batch_id)

    batch = outcome.batch
    if outcome.already_finished:
        raise ApiError(
            409,
            "batch_finished",
            f"batch {batch.id} has already finished with status {batch.status}; there is nothing to cancel",
            [{"field": "status", "value": batch.status, "message": "only queued or running batches can be cancelled"}],
        )

    with_ids(logger, batch_id=batch.id, request_id=g.request_id).info(
        "batch cancel requested: %d jobs cancelled", outcome.cancelled_jobs
    )
    return jsonify({**batch_detail(batch), "cancelled_jobs": outcome.cancelled_jobs})


def _send_jobs(state, job_ids: list[str], log) -> None:
    try:
        send_recorded(state.enqueue, state.repository, job_ids)
    except Exception:
        log.warning(
            "batch stored but not all %d jobs were sent to the broker; the sweeper will send the rest",
            len(job_ids), exc_info=True,
        )
    else:
        log.info("batch accepted and %d jobs sent to the queue", len(job_ids))


def _jsonl_chunks(results) -> Iterator[bytes]:
    chunk: list[bytes] = []
    size = 0
    for result in results:
        line = (json.dumps(result_line(result), ensure_ascii=False) + "\n").encode("utf-8")
        chunk.append(line)
        size += len(line)
        if size >= RESULTS_CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


def _upload_media_type() -> str:
    media_type = request.mimetype
    allowed = (*JSONL_MEDIA_TYPES, JSON_MEDIA_TYPE)
    if media_type not in allowed:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be one of {', '.join(allowed)}, not {request.content_type or 'missing'}",
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type", f"charset must be utf-8, not {charset}")
    return media_type


def _submit_parameters() -> tuple[bool, str | None]:
    errors = _unknown_parameters(SUBMIT_PARAMETERS)
    skip_text = request.args.get("skip_invalid", "false").lower()
    if skip_text not in BOOLEAN_VALUES:
        errors.append({"field": "skip_invalid", "value": skip_text, "message": "must be true or false"})
    if errors:
        raise ApiError(422, "validation_failed", "the query parameters are invalid", errors)
    return BOOLEAN_VALUES[skip_text], request.args.get("file_name")


def _after_line() -> int:
    errors = _unknown_parameters(RESULTS_PARAMETERS)
    text = request.args.get("after_line", "0")
    if not re.fullmatch(r"[0-9]{1,10}", text) or int(text) > MAX_AFTER_LINE:
        errors.append({
            "field": "after_line",
            "value": text,
            "message": f"must be an integer between 0 and {MAX_AFTER_LINE}: the last line already received",
        })
    if errors:
        raise ApiError(422, "validation_failed", "the query parameters are invalid", errors)
    return int(text)


def _unknown_parameters(allowed: tuple[str, ...]) -> list[dict]:
    errors = []
    for name in request.args:
        if name not in allowed:
            errors.append({
                "field": name,
                "value": request.args[name],
                "message": "unknown query parameter; allowed: " + ", ".join(allowed),
            })
        elif len(request.args.getlist(name)) > 1:
            errors.append({"field": name, "value": request.args.getlist(name), "message": "must be given once"})
    return errors


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"batch upload is larger than the limit of {limit} bytes (SLOTQ_MAX_BATCH_BODY_BYTES); split it into several batches",
    )


def _checked_batch_id(batch_id: str) -> str:
    if not JOB_ID_PATTERN.fullmatch(batch_id.lower()):
        raise _batch_not_found(batch_id)
    return batch_id.lower()


def _batch_not_found(batch_id: str) -> ApiError:
    display_id = batch_id if len(batch_id) <= 64 else batch_id[:64] + "…"
    return ApiError(404, "batch_not_found", f"no batch with id {display_id!r}")
