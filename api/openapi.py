"""OpenAPI 3.1 document of the API, served at ``/openapi.json``.

Written by hand, with the request limits filled in from the running settings. The API tests
validate real responses against these schemas, so a change of behaviour that the document
does not follow fails a test.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api.batches_openapi import batch_paths, batch_schemas
from api.security_openapi import add_security, admin_paths, admin_schemas
from api.state import current_state
from slotq import __version__
from slotq.requests import (
    DEFAULT_LR,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_SEED,
    ROLES,
)
from slotq.settings import OVERFIT_POLICIES, Settings
from slotq.store import STATUSES

blueprint = Blueprint("openapi", __name__)

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INTEGER = {"type": ["integer", "null"]}
NULLABLE_NUMBER = {"type": ["number", "null"]}
TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
PURGED_AT = {
    **NULLABLE_TIMESTAMP,
    "description": "When 'slotq purge' removed the prompt, output and δ; the measurements stay.",
}


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    """Return the OpenAPI document for this deployment's limits."""
    return jsonify(build_openapi(current_state().settings))


def build_openapi(settings: Settings) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document, with limits taken from ``settings``."""
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "slot-queue",
            "version": __version__,
            "description": (
                "Asynchronous SLOT generation jobs. Submit a job, then poll it until its status "
                "is succeeded, failed or cancelled. Every response carries an X-Request-ID "
                "header; a request may set it (1 to 128 letters, digits, '.', '_' or '-')."
            ),
        },
        "paths": {**_paths(settings), **batch_paths(settings), **admin_paths()},
        "components": {"schemas": _schemas(settings), "responses": _responses()},
    }
    add_security(document, settings)
    return document


def _error_ref(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content("Error")}


def _json_content(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}


def _paths(settings: Settings) -> dict[str, Any]:
    job_id_parameter = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "Job id, a UUID. Anything else answers 404.",
    }
    default = {"$ref": "#/components/responses/UnexpectedError"}
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job",
                "requestBody": {"required": True, "content": _json_content("JobRequest")},
                "responses": {
                    "202": {
                        "description": "Job stored as queued.",
                        "headers": {
                            "Location": {"schema": {"type": "string"}, "description": "Path of the job."}
                        },
                        "content": _json_content("JobAccepted"),
                    },
                    "400": _error_ref("Body is not valid UTF-8 JSON."),
                    "413": _error_ref(f"Body is larger than {settings.max_body_bytes} bytes."),
                    "415": _error_ref("Content-Type is not application/json with UTF-8."),
                    "422": _error_ref("Request fails validation; details lists every field."),
                    "503": _error_ref("Database unavailable; retry after the Retry-After seconds."),
                    "default": default,
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": settings.max_page_size,
                            "default": settings.default_page_size,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page.",
                    },
                    {
                        "name": "overfit",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                        "description": (
                            "true: only jobs flagged as over-fitted; false: only jobs checked and "
                            "not flagged. Jobs not checked yet match neither."
                        ),
                    },
                ],
                "responses": {
                    "200": {"description": "One page of jobs.", "content": _json_content("JobList")},
                    "422": _error_ref("Unknown parameter, bad status, limit, cursor or overfit."),
                    "default": default,
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "parameters": [job_id_parameter],
            "get": {
                "operationId": "getJob",
                "summary": "Read a job",
                "responses": {
                    "200": {"description": "The job.", "content": _json_content("Job")},
                    "404": _error_ref("No such job."),
                    "default": default,
                },
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued job",
                "responses": {
                    "200": {"description": "The job, now cancelled.", "content": _json_content("Job")},
                    "404": _error_ref("No such job."),
                    "409": _error_ref(
                        "The job is running (it will finish and store its result) or has finished."
                    ),
                    "default": default,
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                "responses": {"200": {"description": "Alive.", "content": _json_content("Health")}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: database and broker reachable",
                "responses": {
                    "200": {"description": "Both reachable.", "content": _json_content("Ready")},
                    "503": {"description": "A check failed.", "content": _json_content("Ready")},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {"description": "OpenAPI 3.1 document.", "content": {"application/json": {}}}
                },
            }
        },
    }


def _responses() -> dict[str, Any]:
    return {
        "UnexpectedError": {
            "description": "Not found (404), method not allowed (405) or internal error (500).",
            "content": _json_content("Error"),
        }
    }


def _schemas(settings: Settings) -> dict[str, Any]:
    return {
        **_request_schemas(settings),
        **_job_schemas(),
        **_service_schemas(),
        **batch_schemas(settings),
        **admin_schemas(),
    }


def _request_schemas(settings: Settings) -> dict[str, Any]:
    text_rule = "No control characters other than tab, newline and carriage return; not blank."
    return {
        "ChatMessage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": list(ROLES)},
                "content": {"type": "string", "minLength": 1, "description": text_rule},
            },
        },
        "SlotParams": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "steps": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": settings.max_steps,
                    "default": DEFAULT_STEPS,
                    "description": "AdamW steps on δ; 0 decodes without SLOT.",
                },
                "lr": {
                    "type": "number",
                    "minimum": settings.min_lr,
                    "maximum": settings.max_lr,
                    "default": DEFAULT_LR,
                    "description": "AdamW learning rate of δ.",
                },
                "overfit_policy": {
                    "type": "string",
                    "enum": list(OVERFIT_POLICIES),
                    "default": settings.overfit_policy,
                    "description": (
                        "What the worker does when δ raises the validation loss by more than "
                        f"{settings.overfit_tolerance:g} (relative): flag keeps the output and flags "
                        "the job, fallback decodes with the step of lowest validation loss (δ = 0 "
                        "included), reject fails the job."
                    ),
                },
            },
        },
        "GenerationParams": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_new_tokens": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.max_new_tokens,
                    "default": DEFAULT_MAX_NEW_TOKENS,
                },
                "temperature": {
                    "type": "number",
                    "minimum": 0,
                    "default": DEFAULT_TEMPERATURE,
                    "description": "0 decodes greedily.",
                },
                "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": DEFAULT_TOP_P},
                "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED, "default": None},
                "stop": {
                    "type": "array",
                    "maxItems": settings.max_stop_strings,
                    "items": {"type": "string", "minLength": 1, "maxLength": settings.max_stop_chars},
                    "default": [],
                },
            },
        },
        "JobRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": (
                "Give exactly one of prompt and messages. Their text is at most "
                f"{settings.max_prompt_chars} characters (for messages, all contents together)."
            ),
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
            "properties": {
                "prompt": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": settings.max_prompt_chars,
                    "description": text_rule,
                },
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_messages,
                    "items": {"$ref": "#/components/schemas/ChatMessage"},
                },
                "slot": {"$ref": "#/components/schemas/SlotParams"},
                "generation": {"$ref": "#/components/schemas/GenerationParams"},
                "metadata": {
                    "type": "object",
                    "description": (
                        f"Client data kept with the job, at most {settings.max_metadata_bytes} "
                        "bytes as compact UTF-8 JSON."
                    ),
                },
            },
        },
    }


def _job_schemas() -> dict[str, Any]:
    status = {"type": "string", "enum": list(STATUSES)}
    return {
        "JobAccepted": {
            "type": "object",
            "required": ["id", "status", "url"],
            "properties": {"id": {"type": "string"}, "status": status, "url": {"type": "string"}},
        },
        "JobResult": {
            "type": "object",
            "required": [
                "output_text",
                "finish_reason",
                "prompt_tokens",
                "output_tokens",
                "delta_norm",
                "delta_dim",
                "loss_trace",
                "head_path",
                "steps_run",
                "diverged_at",
                "seed",
            ],
            "properties": {
                "output_text": NULLABLE_STRING,
                "finish_reason": NULLABLE_STRING,
                "prompt_tokens": NULLABLE_INTEGER,
                "output_tokens": NULLABLE_INTEGER,
                "delta_norm": {**NULLABLE_NUMBER, "description": "L2 norm of δ."},
                "delta_dim": {**NULLABLE_INTEGER, "description": "Length of δ (hidden size)."},
                "loss_trace": {
                    "type": ["array", "null"],
                    "items": NULLABLE_NUMBER,
                    "description": "Prompt loss before each step and after the last; null for a non-finite loss.",
                },
                "head_path": NULLABLE_STRING,
                "steps_run": NULLABLE_INTEGER,
                "diverged_at": NULLABLE_INTEGER,
                "seed": NULLABLE_INTEGER,
            },
        },
        "Guardrails": _guardrails_schema(),
        "Timings": {
            "type": "object",
            "description": "Milliseconds. queue_wait appears when a worker claims the job, the rest on success.",
            "properties": {
                name: {"type": "number"} for name in ("queue_wait", "prefill", "optimize", "decode", "total")
            },
        },
        "Job": {
            "type": "object",
            "required": [
                "id",
                "status",
                "url",
                "model",
                "request",
                "created_at",
                "queued_at",
                "started_at",
                "finished_at",
                "cancelled_at",
                "result",
                "guardrails",
                "timings_ms",
                "worker",
                "attempts",
                "error",
                "purged_at",
            ],
            "properties": {
                "id": {"type": "string"},
                "status": status,
                "url": {"type": "string"},
                "model": {"type": "string"},
                "request": {
                    "anyOf": [{"$ref": "#/components/schemas/JobRequest"}, {"$ref": "#/components/schemas/PurgedRequest"}],
                    "description": (
                        "The request as validated, with every default filled in; without prompt and "
                        "messages once the job was purged."
                    ),
                },
                "created_at": TIMESTAMP,
                "queued_at": TIMESTAMP,
                "started_at": NULLABLE_TIMESTAMP,
                "finished_at": NULLABLE_TIMESTAMP,
                "cancelled_at": NULLABLE_TIMESTAMP,
                "result": {
                    "oneOf": [{"$ref": "#/components/schemas/JobResult"}, {"type": "null"}],
                    "description": "Set when status is succeeded.",
                },
                "guardrails": {"$ref": "#/components/schemas/Guardrails"},
                "timings_ms": {"$ref": "#/components/schemas/Timings"},
                "worker": {**NULLABLE_STRING, "description": "Host and process of the last worker."},
                "attempts": {"type": "integer", "minimum": 0},
                "error": NULLABLE_STRING,
                "purged_at": PURGED_AT,
            },
        },
        "PurgedRequest": {
            "type": "object",
            "description": "The request of a purged job: its parameters, without prompt or messages.",
            "not": {"anyOf": [{"required": ["prompt"]}, {"required": ["messages"]}]},
            "properties": {
                "slot": {"$ref": "#/components/schemas/SlotParams"},
                "generation": {"$ref": "#/components/schemas/GenerationParams"},
                "metadata": {"type": "object"},
            },
        },
        "JobSummary": {
            "type": "object",
            "required": [
                "id",
                "status",
                "url",
                "model",
                "created_at",
                "started_at",
                "finished_at",
                "finish_reason",
                "prompt_tokens",
                "output_tokens",
                "delta_norm",
                "guardrails",
                "attempts",
                "error",
                "purged_at",
            ],
            "properties": {
                "id": {"type": "string"},
                "status": status,
                "url": {"type": "string"},
                "model": {"type": "string"},
                "created_at": TIMESTAMP,
                "started_at": NULLABLE_TIMESTAMP,
                "finished_at": NULLABLE_TIMESTAMP,
                "finish_reason": NULLABLE_STRING,
                "prompt_tokens": NULLABLE_INTEGER,
                "output_tokens": NULLABLE_INTEGER,
                "delta_norm": NULLABLE_NUMBER,
                "guardrails": {"$ref": "#/components/schemas/Guardrails"},
                "attempts": {"type": "integer", "minimum": 0},
                "error": NULLABLE_STRING,
                "purged_at": PURGED_AT,
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobSummary"}},
                "next_cursor": {**NULLABLE_STRING, "description": "Cursor of the next page; null on the last."},
            },
        },
    }


def _guardrails_schema() -> dict[str, Any]:
    loss = "Mean next-token loss of the validation prompts"
    return {
        "type": "object",
        "description": (
            "Over-fitting check and divergence of δ. Fields are null until a worker has run the "
            "check, and a loss that was not finite is null."
        ),
        "required": [
            "policy",
            "overfit",
            "tolerance",
            "validation_loss",
            "validation_loss_base",
            "validation_loss_change",
            "validation_loss_used",
            "delta_step",
            "diverged_at",
            "divergence",
        ],
        "properties": {
            "policy": {"type": ["string", "null"], "enum": [*OVERFIT_POLICIES, None]},
            "overfit": {
                "type": ["boolean", "null"],
                "description": "True when validation_loss_change was above tolerance or the loss was not finite.",
            },
            "tolerance": {**NULLABLE_NUMBER, "description": "Largest relative rise allowed."},
            "validation_loss": {**NULLABLE_NUMBER, "description": f"{loss} with the fitted δ."},
            "validation_loss_base": {**NULLABLE_NUMBER, "description": f"{loss} with δ = 0."},
            "validation_loss_change": {
                **NULLABLE_NUMBER,
                "description": "(validation_loss - validation_loss_base) / validation_loss_base.",
            },
            "validation_loss_used": {**NULLABLE_NUMBER, "description": f"{loss} with the δ decoded."},
            "delta_step": {
                **NULLABLE_INTEGER,
                "description": "Step whose δ was decoded; 0 is δ = 0. Differs from steps_run only under fallback.",
            },
            "diverged_at": {
                **NULLABLE_INTEGER,
                "description": "Step whose loss or δ was not finite; optimisation stopped there.",
            },
            "divergence": {**NULLABLE_STRING, "description": "What happened at diverged_at."},
        },
    }


def _service_schemas() -> dict[str, Any]:
    check = {
        "type": "object",
        "required": ["ok", "error", "ms"],
        "properties": {"ok": {"type": "boolean"}, "error": NULLABLE_STRING, "ms": {"type": "number"}},
    }
    return {
        "ErrorDetail": {
            "type": "object",
            "required": ["field", "value", "message"],
            "properties": {
                "field": {"type": "string", "description": "Dotted path, such as slot.lr or messages.0.role."},
                "value": {"description": "The rejected value, shortened when long."},
                "message": {"type": "string", "description": "What is allowed."},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "details", "request_id"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorDetail"}},
                        "request_id": NULLABLE_STRING,
                    },
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "unavailable"]},
                "checks": {
                    "type": "object",
                    "required": ["database", "broker"],
                    "properties": {"database": check, "broker": check},
                },
                "error": {"$ref": "#/components/schemas/Error/properties/error"},
            },
        },
    }
