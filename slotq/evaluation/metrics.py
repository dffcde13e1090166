"""Scoring of one output: GSM8K final-number match and JSON-schema compliance of form outputs."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

# A number not glued to a preceding letter, digit or point: an optional minus and dollar sign,
# digits with optional thousands commas, and optional decimals. "3-5" yields 3 and 5, not -5.
_NUMBER = re.compile(r"(?<![\w.])(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")
_CODE_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)


def normalize_number(text: str) -> str | None:
    """Return a number in canonical form: no ``$`` or commas, no trailing zero decimals.

    ``"$1,000.00"`` and ``"1000"`` both become ``"1000"``; ``"12.50"`` becomes ``"12.5"``.
    Returns None when ``text`` is not a number.
    """
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_final_number(output: str) -> str | None:
    """Return the last number in ``output``, normalised, or None when it contains no number."""
    matches = _NUMBER.findall(output)
    if not matches:
        return None
    sign, digits = matches[-1]
    return normalize_number(sign + digits)


def score_gsm8k(output: str, reference: dict[str, Any]) -> dict[str, Any]:
    """Score a GSM8K output: exact match of its last number with the reference answer."""
    expected = normalize_number(reference["answer"])
    extracted = extract_final_number(output)
    return {
        "exact_match": extracted is not None and extracted == expected,
        "answer_found": extracted is not None,
        "extracted": extracted,
        "expected": expected,
    }


def parse_json_output(output: str) -> tuple[Any, bool]:
    """Return (value, parsed): the JSON in an output, read from a code fence, the whole text or
    the span from the first ``{`` to the last ``}``, in that order.
    """
    candidates = [match.group(1) for match in _CODE_FENCE.finditer(output)]
    candidates.append(output)
    start, end = output.find("{"), output.rfind("}")
    if 0 <= start < end:
        candidates.append(output[start:end + 1])

    for candidate in candidates:
        try:
            return json.loads(candidate), True
        except json.JSONDecodeError:
            continue
    return None, False


def score_form(output: str, schema: dict) -> dict[str, Any]:
    """Score a form-filling output: it parses as JSON and the value follows ``schema``."""
    from jsonschema import Draft202012Validator

    value, parsed = parse_json_output(output)
    errors = []
    if parsed:
        validator = Draft202012Validator(schema)
        errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(value)]
    return {
        "schema_valid": parsed and not errors,
        "json_parsed": parsed,
        "schema_errors": errors[:5],
    }
