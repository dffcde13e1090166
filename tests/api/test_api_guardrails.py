"""Guardrail settings, request limits and the guardrails view of jobs, through the API.

HTTP tests use Flask's test client on the real Postgres store with a recording enqueue.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from api.openapi import build_openapi
from slotq import guardrails
from slotq.guardrails import GuardOutcome
from slotq.requests import (
    MAX_SEED,
    RequestValidationError,
    check_prompt_tokens,
    parse_job_request,
    prompt_token_limit,
)
from slotq.settings import (
    DEFAULT_VALIDATION_PROMPTS,
    OVERFIT_POLICIES,
    Settings,
    SettingsError,
    load_settings,
)
from slotq.store import JobRepository

SETTINGS = Settings(data_dir="/nonexistent/slotq-tests")
REASON = "delta over-fits the prompt: validation loss rose from 3.0000 to 3.6000 (+20.0%)"


def submit(client: FlaskClient, body: object):
    return client.post("/v1/jobs", json=body)


def submit_raw(client: FlaskClient, raw: str):
    return client.post("/v1/jobs", data=raw.encode("utf-8"), content_type="application/json")


def details(response) -> list[dict]:
    return response.get_json()["error"]["details"]


def guard(**changes: object) -> dict:
    """Return ``GuardOutcome.to_dict()`` of a flagged job, with ``changes`` applied."""
    values = {
        "validation_loss": 3.3,
        "validation_loss_base": 3.0,
        "validation_loss_change": 0.1,
        "overfit": True,
        "policy": "flag",
        "validation_loss_used": 3.3,
        "delta_step": 5,
        "rejected": False,
        "reason": None,
    }
    values.update(changes)
    return GuardOutcome(**values).to_dict()


# Settings


def test_guardrail_settings_defaults() -> None:
    settings = load_settings({})

    assert settings.overfit_tolerance == 0.05
    assert settings.overfit_policy == "flag"
    assert settings.max_prompt_tokens is None
    assert settings.validation_prompts == DEFAULT_VALIDATION_PROMPTS
    assert settings.validation_prompts == guardrails.DEFAULT_VALIDATION_FILE
    assert settings.validation_prompts.is_file()


def test_policies_match_guardrails() -> None:
    assert OVERFIT_POLICIES == guardrails.POLICIES


def test_guardrail_settings_parsed(tmp_path: Path) -> None:
    prompts = tmp_path / "validation.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "こんにちは"}]}\n', encoding="utf-8")

    settings = load_settings(
        {
            "SLOTQ_OVERFIT_TOLERANCE": "0.2",
            "SLOTQ_OVERFIT_POLICY": "fallback",
            "SLOTQ_VALIDATION_PROMPTS": str(prompts),
            "SLOTQ_MAX_PROMPT_TOKENS": "1000",
        }
    )

    assert settings.overfit_tolerance == 0.2
    assert settings.overfit_policy == "fallback"
    assert settings.validation_prompts == prompts
    assert settings.max_prompt_tokens == 1000
    assert guardrails.load_validation_prompts(settings.validation_prompts) == [
        [{"role": "user", "content": "こんにちは"}]
    ]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SLOTQ_OVERFIT_TOLERANCE", "0", 0.0),
        ("SLOTQ_OVERFIT_TOLERANCE", "10", 10.0),
        ("SLOTQ_MAX_PROMPT_TOKENS", "1", 1),
        ("SLOTQ_MAX_PROMPT_TOKENS", "1048576", 1048576),
        ("SLOTQ_OVERFIT_POLICY", "reject", "reject"),
    ],
)
def test_guardrail_bounds_inclusive(variable: str, value: str, expected: object) -> None:
    field = {
        "SLOTQ_OVERFIT_TOLERANCE": "overfit_tolerance",
        "SLOTQ_MAX_PROMPT_TOKENS": "max_prompt_tokens",
        "SLOTQ_OVERFIT_POLICY": "overfit_policy",
    }[variable]

    assert getattr(load_settings({variable: value}), field) == expected


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("SLOTQ_OVERFIT_TOLERANCE", "-0.01", "between 0.0 and 10.0"),
        ("SLOTQ_OVERFIT_TOLERANCE", "10.5", "between 0.0 and 10.0"),
        ("SLOTQ_OVERFIT_TOLERANCE", "nan", "between 0.0 and 10.0"),
        ("SLOTQ_OVERFIT_TOLERANCE", "inf", "between 0.0 and 10.0"),
        ("SLOTQ_OVERFIT_TOLERANCE", "five percent", "between 0.0 and 10.0"),
        ("SLOTQ_OVERFIT_POLICY", "drop", "one of flag, fallback, reject"),
        ("SLOTQ_OVERFIT_POLICY", "FLAG", "one of flag, fallback, reject"),
        ("SLOTQ_MAX_PROMPT_TOKENS", "0", "between 1 and 1048576"),
        ("SLOTQ_MAX_PROMPT_TOKENS", "1048577", "between 1 and 1048576"),
        ("SLOTQ_MAX_PROMPT_TOKENS", "2.5", "integer"),
        ("SLOTQ_VALIDATION_PROMPTS", "/nonexistent/prompts.jsonl", "existing, readable file"),
    ],
)
def test_guardrail_setting_invalid(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})

    message = str(caught.value)
    assert f"{variable}={value!r}" in message or f"{variable}={value}" in message
    assert fragment in message


def test_validation_prompts_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=f"SLOTQ_VALIDATION_PROMPTS='{tmp_path}' is invalid"):
        load_settings({"SLOTQ_VALIDATION_PROMPTS": str(tmp_path)})


def test_constructor_checks_guardrails(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SLOTQ_VALIDATION_PROMPTS"):
        Settings(validation_prompts=tmp_path / "missing.jsonl")
    with pytest.raises(SettingsError, match="SLOTQ_OVERFIT_TOLERANCE"):
        Settings(overfit_tolerance=math.nan)
    with pytest.raises(SettingsError, match="SLOTQ_MAX_PROMPT_TOKENS"):
        Settings(max_prompt_tokens=True)


# Request: policy and the worker's token check


def test_policy_default_from_settings() -> None:
    strict = Settings(data_dir="/nonexistent/slotq-tests", overfit_policy="reject")

    request = parse_job_request({"prompt": "x"}, strict)

    assert request.slot.overfit_policy == "reject"
    assert request.to_dict()["slot"]["overfit_policy"] == "reject"


def test_stored_policy_survives_recheck() -> None:
    strict = Settings(data_dir="/nonexistent/slotq-tests", overfit_policy="reject")
    stored = parse_job_request({"prompt": "x"}, strict).to_dict()

    # A worker with other defaults checks the stored request again and keeps its policy.
    again = parse_job_request(json.loads(json.dumps(stored)), SETTINGS)

    assert again.slot.overfit_policy == "reject"


def test_prompt_token_limit() -> None:
    capped = dataclasses.replace(SETTINGS, max_prompt_tokens=100)

    assert prompt_token_limit(SETTINGS, 2048, 64) == 1984
    assert prompt_token_limit(capped, 2048, 64) == 100
    assert prompt_token_limit(capped, 150, 64) == 86


@pytest.mark.parametrize("prompt_tokens", [1, 1983, 1984])
def test_prompt_tokens_within_context(prompt_tokens: int) -> None:
    request = parse_job_request({"prompt": "x"}, SETTINGS)

    check_prompt_tokens(request, prompt_tokens, 2048, SETTINGS)


def test_prompt_tokens_over_context() -> None:
    request = parse_job_request({"prompt": "x"}, SETTINGS)

    with pytest.raises(RequestValidationError) as caught:
        check_prompt_tokens(request, 1985, 2048, SETTINGS)

    assert caught.value.errors == [
        {
            "field": "prompt",
            "value": "<1985 tokens>",
            "message": "must be at most 1984 tokens after the chat template (the model's context "
            "length of 2048 tokens minus generation.max_new_tokens=64)",
        }
    ]


def test_prompt_tokens_over_setting() -> None:
    capped = dataclasses.replace(SETTINGS, max_prompt_tokens=100)
    request = parse_job_request({"messages": [{"role": "user", "content": "x"}]}, capped)

    check_prompt_tokens(request, 100, 2048, capped)
    with pytest.raises(RequestValidationError) as caught:
        check_prompt_tokens(request, 101, 2048, capped)

    error = caught.value.errors[0]
    assert error["field"] == "messages"
    assert error["value"] == "<101 tokens>"
    assert error["message"] == "must be at most 100 tokens after the chat template (SLOTQ_MAX_PROMPT_TOKENS)"


def test_max_new_tokens_fills_context() -> None:
    request = parse_job_request({"prompt": "x", "generation": {"max_new_tokens": 512}}, SETTINGS)

    with pytest.raises(RequestValidationError) as caught:
        check_prompt_tokens(request, 1, 512, SETTINGS)

    assert caught.value.errors == [
        {
            "field": "generation.max_new_tokens",
            "value": 512,
            "message": "must be below the model's context length of 512 tokens",
        }
    ]


# API: numeric fields that are not finite, negative or of the wrong type

RANGES = {
    "slot.steps": "must be an integer between 0 and 20",
    "slot.lr": "must be a number between 0.0001 and 1.0",
    "generation.max_new_tokens": "must be an integer between 1 and 512",
    "generation.temperature": "must be a finite number of at least 0",
    "generation.top_p": "must be a number greater than 0 and at most 1",
    "generation.seed": f"must be null or an integer between 0 and {MAX_SEED}",
}
# JSON literal and the value the error must echo.
BAD_NUMBERS = [
    ("NaN", "nan"),
    ("Infinity", "inf"),
    ("-Infinity", "-inf"),
    ("-1", -1),
    ('"1"', "1"),
    ("true", True),
]


@pytest.mark.parametrize("path", list(RANGES))
@pytest.mark.parametrize(("literal", "echoed"), BAD_NUMBERS)
def test_bad_number_422(client: FlaskClient, enqueue, path: str, literal: str, echoed: object) -> None:
    section, name = path.split(".")
    response = submit_raw(client, f'{{"prompt": "x", "{section}": {{"{name}": {literal}}}}}')

    assert response.status_code == 422
    assert details(response) == [{"field": path, "value": echoed, "message": RANGES[path]}]
    assert b"NaN" not in response.data
    assert b"Infinity" not in response.data
    assert enqueue.job_ids == []


# API: every limit at, just inside and just outside it

MESSAGE = {"role": "user", "content": "x"}


def with_value(path: str, value: object) -> dict:
    body: dict = {"prompt": "x"}
    section, _, name = path.partition(".")
    if name:
        body[section] = {name: value}
    else:
        body[section] = value
    return body


LIMITS_ACCEPTED = [
    ("slot.steps", 0),
    ("slot.steps", 19),
    ("slot.steps", 20),
    ("slot.lr", 1e-4),
    ("slot.lr", 1.1e-4),
    ("slot.lr", 0.99),
    ("slot.lr", 1.0),
    ("generation.max_new_tokens", 1),
    ("generation.max_new_tokens", 511),
    ("generation.max_new_tokens", 512),
    ("prompt", "x" * 19999),
    ("prompt", "x" * 20000),
    ("messages", [{"role": "user", "content": "x" * 19999}]),
    ("messages", [{"role": "user", "content": "x" * 10000}] * 2),
    ("messages", [MESSAGE] * 63),
    ("messages", [MESSAGE] * 64),
    ("generation.stop", ["a", "b", "c"]),
    ("generation.stop", ["a", "b", "c", "d"]),
    ("generation.stop", ["あ" * 63]),
    ("generation.stop", ["あ" * 64]),
    # {"k":"..."} is 8 bytes of compact JSON around the value.
    ("metadata", {"k": "x" * 4087}),
    ("metadata", {"k": "x" * 4088}),
]

LIMITS_REJECTED = [
    ("slot.steps", -1, "slot.steps", "between 0 and 20"),
    ("slot.steps", 21, "slot.steps", "between 0 and 20"),
    ("slot.lr", 9.9e-5, "slot.lr", "between 0.0001 and 1.0"),
    ("slot.lr", 1.0000001, "slot.lr", "between 0.0001 and 1.0"),
    ("generation.max_new_tokens", 0, "generation.max_new_tokens", "between 1 and 512"),
    ("generation.max_new_tokens", 513, "generation.max_new_tokens", "between 1 and 512"),
    ("prompt", "x" * 20001, "prompt", "at most 20000 characters"),
    ("messages", [{"role": "user", "content": "x" * 10000}, {"role": "user", "content": "x" * 10001}],
     "messages", "at most 20000 characters"),
    ("messages", [MESSAGE] * 65, "messages", "between 1 and 64 messages"),
    ("generation.stop", ["a", "b", "c", "d", "e"], "generation.stop", "at most 4 strings"),
    ("generation.stop", ["あ" * 65], "generation.stop.0", "at most 64 characters"),
    ("metadata", {"k": "x" * 4089}, "metadata", "at most 4096 bytes"),
]


@pytest.mark.parametrize(("path", "value"), LIMITS_ACCEPTED)
def test_limit_accepted(client: FlaskClient, path: str, value: object) -> None:
    body = with_value(path, value)
    if path == "messages":
        del body["prompt"]

    response = submit(client, body)

    assert response.status_code == 202, response.get_json()
    stored = client.get(response.get_json()["url"]).get_json()["request"]
    section, _, name = path.partition(".")
    assert (stored[section][name] if name else stored[section]) == value


@pytest.mark.parametrize(("path", "value", "field", "fragment"), LIMITS_REJECTED)
def test_limit_rejected(client: FlaskClient, enqueue, path: str, value: object, field: str, fragment: str) -> None:
    body = with_value(path, value)
    if path == "messages":
        del body["prompt"]

    response = submit(client, body)

    assert response.status_code == 422
    assert [detail["field"] for detail in details(response)] == [field]
    assert fragment in details(response)[0]["message"]
    assert details(response)[0]["value"] is not None
    assert enqueue.job_ids == []


# API: overfit policy in requests


def test_policy_stored_and_shown(client: FlaskClient, schema_check) -> None:
    job_id = submit(client, {"prompt": "x", "slot": {"overfit_policy": "fallback"}}).get_json()["id"]

    body = client.get(f"/v1/jobs/{job_id}").get_json()

    assert schema_check("Job", body) == []
    assert body["request"]["slot"]["overfit_policy"] == "fallback"
    assert body["guardrails"] == {
        "policy": "fallback",
        "overfit": None,
        "tolerance": None,
        "validation_loss": None,
        "validation_loss_base": None,
        "validation_loss_change": None,
        "validation_loss_used": None,
        "delta_step": None,
        "diverged_at": None,
        "divergence": None,
    }


def test_policy_default_follows_settings(
    postgres_settings: Settings, postgres_repository: JobRepository, enqueue, authorize
) -> None:
    settings = dataclasses.replace(postgres_settings, overfit_policy="reject")
    client = authorize(create_app(settings, enqueue=enqueue, repository=postgres_repository).test_client())

    job_id = submit(client, {"prompt": "x"}).get_json()["id"]

    body = client.get(f"/v1/jobs/{job_id}").get_json()
    assert body["request"]["slot"]["overfit_policy"] == "reject"
    assert body["guardrails"]["policy"] == "reject"


@pytest.mark.parametrize("policy", ["drop", "Flag", "", None, 0, False, ["flag"]])
def test_bad_policy_422(client: FlaskClient, enqueue, schema_check, policy: object) -> None:
    response = submit(client, {"prompt": "x", "slot": {"overfit_policy": policy}})

    assert response.status_code == 422
    assert schema_check("Error", response.get_json()) == []
    assert details(response) == [
        {"field": "slot.overfit_policy", "value": policy, "message": "must be one of flag, fallback, reject"}
    ]
    assert enqueue.job_ids == []


# API: guardrails of finished jobs


def finish(repository: JobRepository, job_id: str, guard_values: dict | None, **result: object) -> None:
    repository.claim_job(job_id, "host/1")
    repository.complete_job(job_id, {"text": "ok", "steps_run": 5, **result}, guard_values)


def test_flagged_job_shows_guardrails(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "x"}).get_json()["id"]
    finish(postgres_repository, job_id, {**guard(), "tolerance": 0.05})

    detail = client.get(f"/v1/jobs/{job_id}").get_json()
    listed = client.get("/v1/jobs").get_json()

    assert schema_check("Job", detail) == []
    assert schema_check("JobList", listed) == []
    assert detail["guardrails"] == {
        "policy": "flag",
        "overfit": True,
        "tolerance": 0.05,
        "validation_loss": 3.3,
        "validation_loss_base": 3.0,
        "validation_loss_change": 0.1,
        "validation_loss_used": 3.3,
        "delta_step": 5,
        "diverged_at": None,
        "divergence": None,
    }
    assert listed["jobs"][0]["guardrails"] == detail["guardrails"]
    assert detail["result"]["output_text"] == "ok"


def test_fallback_job_shows_step(client: FlaskClient, postgres_repository: JobRepository) -> None:
    job_id = submit(client, {"prompt": "x", "slot": {"overfit_policy": "fallback"}}).get_json()["id"]
    finish(postgres_repository, job_id, guard(policy="fallback", validation_loss_used=2.95, delta_step=1))

    body = client.get(f"/v1/jobs/{job_id}").get_json()

    assert body["guardrails"]["delta_step"] == 1
    assert body["guardrails"]["validation_loss_used"] == 2.95
    assert body["result"]["steps_run"] == 5


def test_rejected_job_shows_guardrails(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "x", "slot": {"overfit_policy": "reject"}}).get_json()["id"]
    postgres_repository.claim_job(job_id, "host/1")
    postgres_repository.fail_job(
        job_id, REASON, guard(policy="reject", validation_loss=3.6, validation_loss_change=0.2, rejected=True, reason=REASON)
    )

    body = client.get(f"/v1/jobs/{job_id}").get_json()

    assert schema_check("Job", body) == []
    assert body["status"] == "failed"
    assert body["error"] == REASON
    assert body["result"] is None
    assert body["guardrails"]["overfit"] is True
    assert body["guardrails"]["policy"] == "reject"
    assert body["guardrails"]["validation_loss"] == 3.6
    assert body["guardrails"]["validation_loss_change"] == 0.2


def test_non_finite_losses_null_in_json(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "x"}).get_json()["id"]
    finish(postgres_repository, job_id, guard(validation_loss=math.nan, validation_loss_change=math.inf))

    response = client.get(f"/v1/jobs/{job_id}")

    assert b"NaN" not in response.data
    assert b"Infinity" not in response.data
    assert schema_check("Job", response.get_json()) == []
    assert response.get_json()["guardrails"]["validation_loss"] is None
    assert response.get_json()["guardrails"]["validation_loss_change"] is None
    assert response.get_json()["guardrails"]["overfit"] is True


def test_divergence_shown(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    job_id = submit(client, {"prompt": "x"}).get_json()["id"]
    finish(postgres_repository, job_id, guard(overfit=False, delta_step=1), diverged_at=2, steps_run=1)

    body = client.get(f"/v1/jobs/{job_id}").get_json()

    assert schema_check("Job", body) == []
    assert body["result"]["diverged_at"] == 2
    assert body["guardrails"]["diverged_at"] == 2
    assert body["guardrails"]["divergence"].startswith("optimisation stopped at step 2")


# API: overfit filter of the list


def test_list_overfit_filter(client: FlaskClient, postgres_repository: JobRepository, schema_check) -> None:
    ids = [submit(client, {"prompt": f"p{index}"}).get_json()["id"] for index in range(5)]
    finish(postgres_repository, ids[0], guard())
    finish(postgres_repository, ids[1], guard(overfit=False))
    finish(postgres_repository, ids[2], guard())
    finish(postgres_repository, ids[3], None)

    def listed(query: str) -> list[str]:
        body = client.get(f"/v1/jobs?{query}").get_json()
        assert schema_check("JobList", body) == []
        return [job["id"] for job in body["jobs"]]

    assert listed("overfit=true") == [ids[2], ids[0]]
    assert listed("overfit=false") == [ids[1]]
    assert listed("overfit=true&status=succeeded") == [ids[2], ids[0]]
    assert listed("overfit=true&status=queued") == []
    assert listed("") == list(reversed(ids))


def test_list_overfit_pages(client: FlaskClient, postgres_repository: JobRepository) -> None:
    ids = [submit(client, {"prompt": f"p{index}"}).get_json()["id"] for index in range(4)]
    for job_id in ids[:3]:
        finish(postgres_repository, job_id, guard())

    first = client.get("/v1/jobs?overfit=true&limit=2").get_json()
    second = client.get(f"/v1/jobs?overfit=true&limit=2&cursor={first['next_cursor']}").get_json()

    assert [job["id"] for job in first["jobs"] + second["jobs"]] == [ids[2], ids[1], ids[0]]
    assert second["next_cursor"] is None


@pytest.mark.parametrize("value", ["yes", "1", "True", "TRUE", "", "null"])
def test_list_overfit_bad_value_422(client: FlaskClient, schema_check, value: str) -> None:
    response = client.get(f"/v1/jobs?overfit={value}")

    assert response.status_code == 422
    assert schema_check("Error", response.get_json()) == []
    assert details(response) == [{"field": "overfit", "value": value, "message": "must be true or false"}]


def test_list_overfit_twice_422(client: FlaskClient) -> None:
    response = client.get("/v1/jobs?overfit=true&overfit=false")

    assert response.status_code == 422
    assert "overfit" in [detail["field"] for detail in details(response)]


# OpenAPI


def test_openapi_documents_guardrails(postgres_settings: Settings) -> None:
    settings = dataclasses.replace(postgres_settings, overfit_policy="fallback", overfit_tolerance=0.2)

    document = build_openapi(settings)

    schemas = document["components"]["schemas"]
    policy = schemas["SlotParams"]["properties"]["overfit_policy"]
    parameters = {parameter["name"]: parameter for parameter in document["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert policy["enum"] == ["flag", "fallback", "reject"]
    assert policy["default"] == "fallback"
    assert "0.2" in policy["description"]
    assert parameters["overfit"]["schema"] == {"type": "string", "enum": ["true", "false"]}
    assert "guardrails" in schemas["Job"]["required"]
    assert "guardrails" in schemas["JobSummary"]["required"]
    assert set(schemas["Guardrails"]["required"]) == set(schemas["Guardrails"]["properties"])
