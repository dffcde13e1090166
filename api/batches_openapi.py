"""OpenAPI paths and schemas of ``/v1/batches``, merged into the document by `api.openapi`."""

from __future__ import annotations

from typing import Any

from api.batches import COMPLETE_HEADER, LAST_LINE_HEADER, LINE_COUNT_HEADER, MAX_AFTER_LINE
from slotq.batches import JSON_MEDIA_TYPE, JSONL_MEDIA_TYPES
from slotq.formats import MAX_PATTERN_CHARS, MAX_SCHEMA_BYTES
from slotq.settings import Settings
from slotq.store import BATCH_STATUSES, STATUSES
from slotq.store.models import MAX_CUSTOM_ID_CHARS

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INTEGER = {"type": ["integer", "null"]}
NULLABLE_NUMBER = {"type": ["number", "null"]}
TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


def batch_paths(settings: Settings) -> dict[str, Any]:
    """Return the ``/v1/batches`` paths."""
    batch_id = {
        "name": "batch_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "Batch id, a UUID. Anything else answers 404.",
    }
    default = {"$ref": "#/components/responses/UnexpectedError"}
    jsonl_body = {"schema": {"type": "string", "description": "JSONL: an optional BatchHeader line, then BatchLine lines."}}
    return {
        "/v1/batches": {
            "post": {
                "operationId": "submitBatch",
                "summary": "Upload a batch of job requests",
                "description": (
                    "JSONL body (Content-Type application/x-ndjson or application/jsonl): one "
                    "BatchLine per line; the first line may be a BatchHeader with the batch "
                    "options. Line numbers are physical lines of the file, header and blank lines "
                    "included. JSON body (application/json): a BatchUpload object whose requests "
                    "member comes last; line numbers are positions in requests. Defaults are "
                    "merged under each line's request before it is validated. The body is parsed "
                    "as it arrives. An upload with any invalid line is rejected as a whole, with "
                    "every problem (line, custom_id, field, value, message) in one 422, unless "
                    f"skip_invalid=true. At most {settings.max_batch_lines} requests, each line at "
                    f"most {settings.max_body_bytes} bytes."
                ),
                "parameters": [
                    {
                        "name": "skip_invalid",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "false"},
                        "description": "Accept the valid lines and list the invalid ones in skipped.",
                    },
                    {
                        "name": "file_name",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Name of the uploaded file (any Unicode), shown in the batch status.",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        **{media_type: jsonl_body for media_type in JSONL_MEDIA_TYPES},
                        JSON_MEDIA_TYPE: {"schema": _ref("BatchUpload")},
                    },
                },
                "responses": {
                    "202": {
                        "description": "Batch stored and its jobs sent to the workers.",
                        "headers": {"Location": {"schema": {"type": "string"}, "description": "Path of the batch."}},
                        "content": _json("BatchAccepted"),
                    },
                    "400": _error("Body is not valid UTF-8 JSON (JSON form)."),
                    "413": _error(f"Body is larger than {settings.max_batch_body_bytes} bytes (SLOTQ_MAX_BATCH_BODY_BYTES)."),
                    "415": _error("Content-Type is not one of the upload media types with UTF-8."),
                    "422": _error(
                        "Invalid options or lines (details has line and custom_id for each line "
                        "problem; code validation_failed), too many lines (too_many_lines) or no "
                        "valid line (empty_batch)."
                    ),
                    "503": _error("Database unavailable; retry after the Retry-After seconds."),
                    "default": default,
                },
            }
        },
        "/v1/batches/{batch_id}": {
            "parameters": [batch_id],
            "get": {
                "operationId": "getBatch",
                "summary": "Read a batch's status, counts and progress",
                "responses": {
                    "200": {"description": "The batch.", "content": _json("Batch")},
                    "404": _error("No such batch."),
                    "default": default,
                },
            },
        },
        "/v1/batches/{batch_id}/results": {
            "parameters": [batch_id],
            "get": {
                "operationId": "getBatchResults",
                "summary": "Download finished results as JSONL, in input order",
                "description": (
                    "Streams one BatchResultLine per finished job, in input order, starting after "
                    "after_line and stopping before the first line that is not finished yet. A "
                    "download can therefore be resumed by passing the last line received (the "
                    f"{LAST_LINE_HEADER} header, or the line field of the last line) as after_line, "
                    "and never skips or repeats a line. Works while the batch is running."
                ),
                "parameters": [
                    {
                        "name": "after_line",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_AFTER_LINE, "default": 0},
                        "description": "Return only lines with a larger line number.",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "JSONL results (possibly empty).",
                        "headers": {
                            LAST_LINE_HEADER: {
                                "schema": {"type": "integer"},
                                "description": "Line number of the last line in this response (after_line when empty).",
                            },
                            LINE_COUNT_HEADER: {"schema": {"type": "integer"}, "description": "Lines in this response."},
                            COMPLETE_HEADER: {
                                "schema": {"type": "string", "enum": ["true", "false"]},
                                "description": "true when no unfinished line follows, so nothing more will come.",
                            },
                        },
                        "content": {"application/x-ndjson": {"schema": _ref("BatchResultLine")}},
                    },
                    "404": _error("No such batch."),
                    "422": _error("after_line is not an integer in range, or an unknown parameter."),
                    "default": default,
                },
            },
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": [batch_id],
            "post": {
                "operationId": "cancelBatch",
                "summary": "Cancel a batch's queued jobs",
                "description": "Queued jobs are cancelled; running jobs finish and store their results; finished results are kept.",
                "responses": {
                    "200": {"description": "The batch after cancelling.", "content": _json("BatchCancelled")},
                    "404": _error("No such batch."),
                    "409": _error("The batch has already completed or been cancelled."),
                    "default": default,
                },
            },
        },
    }


def batch_schemas(settings: Settings) -> dict[str, Any]:
    """Return the component schemas of batches."""
    return {**_upload_schemas(settings), **_status_schemas(), **_result_schemas()}


def _upload_schemas(settings: Settings) -> dict[str, Any]:
    options = {
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "description": "Merged under each line's request, key by key; the line's values win.",
            "properties": {
                "slot": _ref("SlotParams"),
                "generation": _ref("GenerationParams"),
                "metadata": {"type": "object"},
            },
        },
        "response_format": _ref("ResponseFormat"),
        "validation_prompts": {
            "type": "array",
            "minItems": 1,
            "maxItems": settings.max_batch_validation_prompts,
            "description": "Held-out prompts for the over-fitting check; left out, workers use their default set.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["messages"],
                "properties": {"messages": {"type": "array", "items": _ref("ChatMessage")}},
            },
        },
        "metadata": {"type": "object", "description": f"Client data, at most {settings.max_metadata_bytes} bytes."},
    }
    return {
        "ResponseFormat": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "schema"],
                    "properties": {
                        "type": {"const": "json_schema"},
                        "schema": {
                            "type": ["object", "boolean"],
                            "description": (
                                f"JSON Schema (Draft 2020-12 unless $schema names another), at most {MAX_SCHEMA_BYTES} "
                                "bytes. The output's JSON value is taken from the whole output, else a fenced code "
                                "block, else the first balanced object or array in the text."
                            ),
                        },
                    },
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "pattern"],
                    "properties": {
                        "type": {"const": "regex"},
                        "pattern": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_PATTERN_CHARS,
                            "description": "Python regular expression that must match the whole output, surrounding whitespace stripped.",
                        },
                    },
                },
            ]
        },
        "BatchOptions": {"type": "object", "additionalProperties": False, "properties": options},
        "BatchHeader": {
            "type": "object",
            "additionalProperties": False,
            "required": ["batch"],
            "properties": {"batch": _ref("BatchOptions")},
        },
        "BatchLine": {
            "type": "object",
            "additionalProperties": False,
            "required": ["custom_id", "request"],
            "properties": {
                "custom_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_CUSTOM_ID_CHARS,
                    "description": "Unique within the batch.",
                },
                "request": _ref("JobRequest"),
            },
        },
        "BatchUpload": {
            "type": "object",
            "additionalProperties": False,
            "required": ["requests"],
            "description": "The JSON form. requests must be the last member.",
            "properties": {
                **options,
                "requests": {"type": "array", "maxItems": settings.max_batch_lines, "items": _ref("BatchLine")},
            },
        },
    }


def _status_schemas() -> dict[str, Any]:
    problem = {
        "type": "object",
        "required": ["line", "custom_id", "errors"],
        "properties": {
            "line": {"type": "integer"},
            "custom_id": NULLABLE_STRING,
            "errors": {"type": "array", "items": _ref("ErrorDetail")},
        },
    }
    counts = {
        "type": "object",
        "required": list(STATUSES),
        "properties": {status: {"type": "integer", "minimum": 0} for status in STATUSES},
    }
    batch_properties = {
        "id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": list(BATCH_STATUSES),
            "description": (
                "queued: no job started. running: some started, some unfinished. completed: all "
                "finished. cancelling: cancel requested, jobs still running. cancelled: cancel "
                "requested, all finished."
            ),
        },
        "url": {"type": "string"},
        "results_url": {"type": "string"},
        "model": {"type": "string"},
        "input_file_name": NULLABLE_STRING,
        "line_count": {"type": "integer", "description": "Jobs in the batch."},
        "skipped_count": {"type": "integer", "description": "Invalid lines left out with skip_invalid."},
        "counts": counts,
        "finished": {"type": "integer", "description": "Jobs succeeded, failed or cancelled."},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "estimated_seconds_left": {
            **NULLABLE_NUMBER,
            "description": (
                "Estimate: unfinished jobs times the wall time since the first job started "
                "divided by the jobs that ran to the end. 0 when nothing is left; null before "
                "any job ran to the end."
            ),
        },
        "format": {
            "type": ["object", "null"],
            "description": "Output format compliance; null without a response_format.",
            "required": ["type", "checked", "compliant", "compliance_rate", "unchecked_succeeded"],
            "properties": {
                "type": {"type": "string"},
                "checked": {"type": "integer"},
                "compliant": {"type": "integer"},
                "compliance_rate": {**NULLABLE_NUMBER, "description": "compliant / checked; null when none checked."},
                "unchecked_succeeded": {"type": "integer"},
            },
        },
        "overfit_count": {"type": "integer", "description": "Jobs whose δ was flagged as over-fitted."},
        "created_at": TIMESTAMP,
        "started_at": NULLABLE_TIMESTAMP,
        "finished_at": NULLABLE_TIMESTAMP,
        "cancelled_at": NULLABLE_TIMESTAMP,
        "defaults": {"type": "object"},
        "response_format": {"oneOf": [_ref("ResponseFormat"), {"type": "null"}]},
        "validation_prompt_count": {"type": "integer"},
        "metadata": {"type": "object"},
    }
    return {
        "BatchAccepted": {
            "type": "object",
            "required": ["id", "status", "url", "results_url", "line_count", "skipped_count", "skipped"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": list(BATCH_STATUSES)},
                "url": {"type": "string"},
                "results_url": {"type": "string"},
                "line_count": {"type": "integer"},
                "skipped_count": {"type": "integer"},
                "skipped": {"type": "array", "items": problem},
            },
        },
        "Batch": {"type": "object", "required": list(batch_properties), "properties": batch_properties},
        "BatchCancelled": {
            "type": "object",
            "required": [*batch_properties, "cancelled_jobs"],
            "properties": {**batch_properties, "cancelled_jobs": {"type": "integer", "minimum": 0}},
        },
    }


def _result_schemas() -> dict[str, Any]:
    properties = {
        "custom_id": {"type": "string"},
        "line": {"type": "integer", "description": "Input line number (JSONL) or position in requests (JSON)."},
        "job_id": {"type": "string"},
        "job_url": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "output": NULLABLE_STRING,
        "parsed_output": {"description": "JSON value found in the output, or the regex's named groups; null when none."},
        "format": {
            "type": ["object", "null"],
            "description": "Format check; null when the batch has no response_format or the job did not succeed.",
            "required": ["ok", "source", "error"],
            "properties": {
                "ok": {"type": "boolean"},
                "source": {"type": ["string", "null"], "enum": ["whole", "fenced", "embedded", None]},
                "error": NULLABLE_STRING,
            },
        },
        "finish_reason": NULLABLE_STRING,
        "prompt_tokens": NULLABLE_INTEGER,
        "output_tokens": NULLABLE_INTEGER,
        "delta_norm": NULLABLE_NUMBER,
        "overfit": {"type": ["boolean", "null"]},
        "timings_ms": _ref("Timings"),
        "started_at": NULLABLE_TIMESTAMP,
        "finished_at": NULLABLE_TIMESTAMP,
        "error": NULLABLE_STRING,
    }
    return {"BatchResultLine": {"type": "object", "required": list(properties), "properties": properties}}
