"""The Japanese form-filling example: files are current, consistent and acceptable to the parser."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

from jsonschema import Draft202012Validator

from slotq.batches import BatchUpload
from slotq.formats import check_output, parse_response_format
from slotq.guardrails import load_validation_prompts
from slotq.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "forms_ja"


def load_build():
    spec = importlib.util.spec_from_file_location("forms_ja_build", EXAMPLE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_outputs_match_build_script() -> None:
    orders, validation = load_build().build_lines()

    assert (EXAMPLE / "orders.jsonl").read_text(encoding="utf-8") == "\n".join(orders) + "\n"
    assert (EXAMPLE / "validation.jsonl").read_text(encoding="utf-8") == "\n".join(validation) + "\n"


def test_orders_parse_with_schema_and_validation() -> None:
    upload = BatchUpload(io.BytesIO((EXAMPLE / "orders.jsonl").read_bytes()), "application/x-ndjson", Settings())

    spec = upload.read_spec()
    lines = list(upload.lines())

    assert len(lines) == 24
    assert len({line.custom_id for line in lines}) == 24
    schema = json.loads((EXAMPLE / "order.schema.json").read_text(encoding="utf-8"))
    assert spec.response_format == {"type": "json_schema", "schema": schema}
    assert spec.validation_prompts == load_validation_prompts(EXAMPLE / "validation.jsonl")
    assert len(spec.validation_prompts) == 4


def test_expected_forms_comply() -> None:
    schema = json.loads((EXAMPLE / "order.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    response_format = parse_response_format({"type": "json_schema", "schema": schema})

    emails = [json.loads(text) for text in (EXAMPLE / "emails.jsonl").read_text(encoding="utf-8").splitlines()]

    assert len(emails) == 24
    for email in emails:
        answer = json.dumps(email["expected"], ensure_ascii=False)
        assert check_output(answer, response_format).ok, email["custom_id"]
        assert email["expected"]["品名"] in email["email"]


def test_validation_forms_held_out() -> None:
    emails = {json.loads(text)["email"] for text in (EXAMPLE / "emails.jsonl").read_text(encoding="utf-8").splitlines()}

    for prompt in load_validation_prompts(EXAMPLE / "validation.jsonl"):
        assert prompt[-1]["content"] not in emails
