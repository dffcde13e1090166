"""Unit tests of `slotq.requests.parse_job_request` with the default limits."""

from __future__ import annotations

import copy
import json
import math

import pytest

from slotq.requests import MAX_SEED, JobRequest, RequestValidationError, parse_job_request
from slotq.settings import Settings

SETTINGS = Settings(data_dir="/nonexistent/slotq-tests")


def errors_of(body: object, settings: Settings = SETTINGS) -> list[dict]:
    with pytest.raises(RequestValidationError) as caught:
        parse_job_request(body, settings)
    return caught.value.errors


def fields_of(body: object) -> list[str]:
    return [error["field"] for error in errors_of(body)]


def with_value(path: str, value: object) -> dict:
    """Return a minimal valid body with ``value`` set at the dotted ``path``."""
    body: dict = {"prompt": "Hello"}
    *parents, leaf = path.split(".")
    node = body
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    return body


def test_defaults_filled_in() -> None:
    request = parse_job_request({"prompt": "Hello"}, SETTINGS)

    assert request.prompt == "Hello"
    assert request.messages is None
    assert request.slot.steps == 5
    assert request.slot.lr == 0.1
    assert request.slot.overfit_policy == "flag"
    assert request.generation.max_new_tokens == 64
    assert request.generation.temperature == 0.0
    assert request.generation.top_p == 1.0
    assert request.generation.seed is None
    assert request.generation.stop == ()
    assert request.metadata == {}


def test_japanese_prompt_unchanged() -> None:
    prompt = "日本の首都はどこですか？\n一文で答えてください。"
    request = parse_job_request({"prompt": prompt, "metadata": {"メモ": "テスト"}}, SETTINGS)

    assert request.prompt == prompt
    assert request.metadata == {"メモ": "テスト"}


def test_messages_parsed() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "こんにちは"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again?"},
    ]
    request = parse_job_request({"messages": messages}, SETTINGS)

    assert request.prompt is None
    assert request.engine_prompt == messages
    assert request.messages[1].content == "こんにちは"


def test_to_dict_round_trip() -> None:
    body = {
        "messages": [{"role": "user", "content": "東京"}],
        "slot": {"steps": 3, "lr": 0.05, "overfit_policy": "fallback"},
        "generation": {"max_new_tokens": 10, "temperature": 0.7, "top_p": 0.9, "seed": 7, "stop": ["\n"]},
        "metadata": {"tag": ["a", 1, None, {"x": 1.5}]},
    }
    request = parse_job_request(body, SETTINGS)

    again = parse_job_request(json.loads(json.dumps(request.to_dict())), SETTINGS)

    assert again == request
    assert isinstance(again, JobRequest)


def test_input_not_modified() -> None:
    body = {"prompt": "x", "generation": {"stop": ["a"]}, "metadata": {"k": [1]}}
    before = copy.deepcopy(body)

    parse_job_request(body, SETTINGS)

    assert body == before


# (path, value) pairs at a limit or just inside it: each must be accepted.
ACCEPTED = [
    ("slot.steps", 0),
    ("slot.steps", 1),
    ("slot.steps", 19),
    ("slot.steps", 20),
    ("slot.lr", 1e-4),
    ("slot.lr", 1.1e-4),
    ("slot.lr", 0.99),
    ("slot.lr", 1.0),
    ("slot.lr", 1),
    ("generation.max_new_tokens", 1),
    ("generation.max_new_tokens", 2),
    ("generation.max_new_tokens", 511),
    ("generation.max_new_tokens", 512),
    ("generation.temperature", 0),
    ("generation.temperature", 1e-9),
    ("generation.temperature", 2.5),
    ("generation.top_p", 1e-9),
    ("generation.top_p", 0.5),
    ("generation.top_p", 1),
    ("generation.seed", None),
    ("generation.seed", 0),
    ("generation.seed", MAX_SEED),
    ("generation.stop", []),
    ("generation.stop", ["a", "b", "c"]),
    ("generation.stop", ["a", "b", "c", "d"]),
    ("generation.stop", ["x" * 63]),
    ("generation.stop", ["x" * 64]),
    ("generation.stop", ["\n\n"]),
    ("prompt", "x"),
    ("prompt", "x" * 19999),
    ("prompt", "x" * 20000),
    ("prompt", "tab\tnewline\ncarriage\r"),
    ("metadata", {}),
    ("slot.overfit_policy", "flag"),
    ("slot.overfit_policy", "fallback"),
    ("slot.overfit_policy", "reject"),
]


@pytest.mark.parametrize(("path", "value"), ACCEPTED)
def test_value_accepted(path: str, value: object) -> None:
    request = parse_job_request(with_value(path, value), SETTINGS)

    assert isinstance(request, JobRequest)


# (path, value, expected message fragment) just outside a limit or of a wrong type.
REJECTED = [
    ("slot.steps", -1, "between 0 and 20"),
    ("slot.steps", 21, "between 0 and 20"),
    ("slot.steps", 5.0, "integer"),
    ("slot.steps", "5", "integer"),
    ("slot.steps", True, "integer"),
    ("slot.steps", None, "integer"),
    ("slot.steps", math.nan, "between 0 and 20"),
    ("slot.steps", math.inf, "between 0 and 20"),
    ("slot.steps", -math.inf, "between 0 and 20"),
    ("slot.lr", 9.9e-5, "between 0.0001 and 1.0"),
    ("slot.lr", 1.0000001, "between 0.0001 and 1.0"),
    ("slot.lr", 0, "between 0.0001 and 1.0"),
    ("slot.lr", -0.1, "between 0.0001 and 1.0"),
    ("slot.lr", "0.1", "number"),
    ("slot.lr", True, "number"),
    ("slot.lr", math.nan, "number"),
    ("slot.lr", math.inf, "number"),
    ("slot.lr", -math.inf, "between 0.0001 and 1.0"),
    ("generation.max_new_tokens", 0, "between 1 and 512"),
    ("generation.max_new_tokens", 513, "between 1 and 512"),
    ("generation.max_new_tokens", False, "integer"),
    ("generation.max_new_tokens", "64", "integer"),
    ("generation.max_new_tokens", -1, "between 1 and 512"),
    ("generation.max_new_tokens", True, "between 1 and 512"),
    ("generation.max_new_tokens", math.nan, "between 1 and 512"),
    ("generation.max_new_tokens", math.inf, "between 1 and 512"),
    ("generation.max_new_tokens", -math.inf, "between 1 and 512"),
    ("generation.temperature", -1e-9, "at least 0"),
    ("generation.temperature", math.inf, "finite"),
    ("generation.temperature", -math.inf, "finite"),
    ("generation.temperature", math.nan, "finite"),
    ("generation.temperature", "0", "number"),
    ("generation.temperature", True, "at least 0"),
    ("generation.top_p", 0, "greater than 0"),
    ("generation.top_p", 1.0000001, "at most 1"),
    ("generation.top_p", math.nan, "greater than 0"),
    ("generation.top_p", math.inf, "at most 1"),
    ("generation.top_p", -math.inf, "greater than 0"),
    ("generation.top_p", -0.5, "greater than 0"),
    ("generation.top_p", "0.5", "greater than 0"),
    ("generation.top_p", True, "greater than 0"),
    ("generation.seed", -1, "between 0 and"),
    ("generation.seed", MAX_SEED + 1, "between 0 and"),
    ("generation.seed", 1.5, "integer"),
    ("generation.seed", True, "integer"),
    ("generation.seed", "7", "integer"),
    ("generation.seed", math.nan, "between 0 and"),
    ("generation.seed", math.inf, "between 0 and"),
    ("generation.seed", -math.inf, "between 0 and"),
    ("generation.stop", ["a", "b", "c", "d", "e"], "at most 4"),
    ("generation.stop", "a", "array"),
    ("generation.stop.0", "x" * 65, "at most 64"),
    ("generation.stop.0", "", "not be empty"),
    ("generation.stop.0", 3, "string"),
    ("generation.stop.0", "a\x00b", "control characters"),
    ("prompt", "", "non-whitespace"),
    ("prompt", " \n\t", "non-whitespace"),
    ("prompt", "x" * 20001, "at most 20000"),
    ("prompt", 42, "string"),
    ("prompt", None, "string"),
    ("prompt", "a\x00b", "control characters"),
    ("prompt", "escape \x1b[31m", "control characters"),
    ("prompt", "delete \x7f", "control characters"),
    ("prompt", "next line \x85", "control characters"),
    ("prompt", "lone \ud800 surrogate", "surrogates"),
    ("metadata", [], "object"),
    ("metadata", None, "object"),
    ("metadata", {"x": math.nan}, "NaN"),
    ("metadata", {"x": "\udc00"}, "Unicode"),
    ("slot", 5, "object"),
    ("slot.overfit_policy", "drop", "one of flag, fallback, reject"),
    ("slot.overfit_policy", "FLAG", "one of flag, fallback, reject"),
    ("slot.overfit_policy", "", "one of flag, fallback, reject"),
    ("slot.overfit_policy", None, "one of flag, fallback, reject"),
    ("slot.overfit_policy", 1, "one of flag, fallback, reject"),
    ("slot.overfit_policy", True, "one of flag, fallback, reject"),
    ("slot.overfit_policy", ["flag"], "one of flag, fallback, reject"),
    ("generation", [], "object"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), REJECTED)
def test_value_rejected(path: str, value: object, fragment: str) -> None:
    body = with_value(path, value)
    if path.startswith("generation.stop."):
        body = with_value("generation.stop", [value])

    errors = errors_of(body)

    assert [error["field"] for error in errors] == [path]
    assert fragment in errors[0]["message"]
    json.dumps(errors, allow_nan=False, ensure_ascii=False).encode("utf-8")


def test_lr_message_names_range() -> None:
    errors = errors_of(with_value("slot.lr", 2.0))

    assert errors == [{"field": "slot.lr", "value": 2.0, "message": "must be a number between 0.0001 and 1.0"}]


def test_nan_value_echoed_as_text() -> None:
    errors = errors_of(with_value("slot.lr", math.nan))

    assert errors[0]["value"] == "nan"


def test_metadata_size_limit() -> None:
    # {"k":"..."} is 8 bytes of JSON around the value.
    at_limit = {"k": "x" * (4096 - 8)}
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 4096
    parse_job_request({"prompt": "x", "metadata": at_limit}, SETTINGS)
    parse_job_request({"prompt": "x", "metadata": {"k": "x" * (4096 - 9)}}, SETTINGS)

    over = {"k": "x" * (4096 - 7)}
    errors = errors_of({"prompt": "x", "metadata": over})

    assert errors[0]["field"] == "metadata"
    assert errors[0]["value"] == "<4097 bytes>"


def test_metadata_size_counts_utf8_bytes() -> None:
    # Each of these characters is 3 bytes in UTF-8: 1365 * 3 + 8 = 4103 bytes.
    errors = errors_of({"prompt": "x", "metadata": {"k": "あ" * 1365}})

    assert errors[0]["field"] == "metadata"


def test_unknown_fields_rejected_everywhere() -> None:
    body = {
        "prompt": "x",
        "model": "gpt",
        "slot": {"steps": 1, "step": 2},
        "generation": {"max_tokens": 5},
    }

    assert sorted(fields_of(body)) == ["generation.max_tokens", "model", "slot.step"]


def test_unknown_message_field_rejected() -> None:
    body = {"messages": [{"role": "user", "content": "x", "name": "bob"}]}

    assert fields_of(body) == ["messages.0.name"]


def test_prompt_and_messages_together() -> None:
    body = {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}

    assert fields_of(body) == ["messages"]


def test_prompt_or_messages_required() -> None:
    errors = errors_of({"slot": {"steps": 1}})

    assert errors[0]["field"] == "prompt"
    assert "required" in errors[0]["message"]


@pytest.mark.parametrize(
    ("messages", "expected_fields"),
    [
        ([], ["messages"]),
        ("hi", ["messages"]),
        ([{"role": "robot", "content": "x"}], ["messages.0.role"]),
        ([{"content": "x"}], ["messages.0.role"]),
        ([{"role": "user"}], ["messages.0.content"]),
        ([{"role": "user", "content": ""}], ["messages.0.content"]),
        ([{"role": "user", "content": "ok"}, "x"], ["messages.1"]),
        ([{"role": "user", "content": "\x00"}], ["messages.0.content"]),
    ],
)
def test_bad_messages(messages: object, expected_fields: list[str]) -> None:
    assert fields_of({"messages": messages}) == expected_fields


def test_message_count_limit() -> None:
    message = {"role": "user", "content": "x"}
    parse_job_request({"messages": [message] * 63}, SETTINGS)
    parse_job_request({"messages": [message] * 64}, SETTINGS)

    assert fields_of({"messages": [message] * 65}) == ["messages"]


def test_messages_total_length_limit() -> None:
    half = {"role": "user", "content": "x" * 10000}
    parse_job_request({"messages": [half, half]}, SETTINGS)
    parse_job_request({"messages": [half, {"role": "user", "content": "x" * 9999}]}, SETTINGS)

    errors = errors_of({"messages": [half, half, {"role": "user", "content": "y"}]})

    assert errors[0]["field"] == "messages"
    assert errors[0]["value"] == "<20001 characters>"


def test_all_errors_reported_at_once() -> None:
    body = {
        "prompt": "",
        "slot": {"steps": -1, "lr": "fast"},
        "generation": {"max_new_tokens": 0, "temperature": -1, "top_p": 2, "seed": "x", "stop": [""]},
        "metadata": [],
        "extra": 1,
    }

    assert sorted(fields_of(body)) == sorted(
        [
            "extra",
            "prompt",
            "slot.steps",
            "slot.lr",
            "generation.max_new_tokens",
            "generation.temperature",
            "generation.top_p",
            "generation.seed",
            "generation.stop.0",
            "metadata",
        ]
    )


@pytest.mark.parametrize("body", [None, [], "prompt", 5])
def test_body_must_be_object(body: object) -> None:
    assert fields_of(body) == ["body"]


def test_long_values_shortened_in_errors() -> None:
    errors = errors_of({"prompt": "x", "unknown": "y" * 1000})

    assert len(errors[0]["value"]) <= 65


def test_limits_follow_settings() -> None:
    strict = Settings(data_dir="/nonexistent/slotq-tests", max_steps=2, max_lr=0.2, max_prompt_chars=5)

    errors = errors_of({"prompt": "123456", "slot": {"steps": 3, "lr": 0.3}}, strict)

    assert {error["field"]: error["message"] for error in errors} == {
        "prompt": "must be at most 5 characters long",
        "slot.steps": "must be an integer between 0 and 2",
        "slot.lr": "must be a number between 0.0001 and 0.2",
    }
