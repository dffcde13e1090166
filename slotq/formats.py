"""Output formats that a batch may require, and the check of one output against them.

A response format is one of:

- ``{"type": "json_schema", "schema": {...}}``: the output must contain a JSON value that
  validates against the schema. The schema is checked at submission with the validator class
  its ``$schema`` names (JSON Schema Draft 2020-12 when it names none), and ``format``
  keywords such as ``date`` are asserted, not only annotated.
- ``{"type": "regex", "pattern": "..."}``: the output, with leading and trailing whitespace
  removed, must match the pattern as a whole (Python `re.fullmatch` semantics).

`check_output` looks for the JSON value in three places, in this order, and reports which one
it used as ``source``: the whole output (``whole``), the body of a fenced code block such as
``\\`\\`\\`json ... \\`\\`\\``` (``fenced``), and a balanced object or array inside surrounding
prose (``embedded``). The first candidate that validates wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from slotq import SlotqError

FORMAT_TYPES = ("json_schema", "regex")
FORMAT_FIELDS = {"json_schema": ("type", "schema"), "regex": ("type", "pattern")}
SOURCES = ("whole", "fenced", "embedded")

#: Maximum length of a regex pattern, in characters.
MAX_PATTERN_CHARS = 2000
#: Maximum size of a JSON schema, in bytes of compact UTF-8 JSON.
MAX_SCHEMA_BYTES = 65536
#: Maximum number of JSON candidates (fenced blocks plus embedded values) tried per output.
MAX_CANDIDATES = 32
#: Maximum length of the failure reason stored per output, in characters.
MAX_REASON_CHARS = 500

_FENCED_BLOCK = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)
_VALUE_START = re.compile(r"[\[{]")


class ResponseFormatError(SlotqError, ValueError):
    """A response format is invalid.

    Attributes:
        errors: one ``{"field", "value", "message"}`` dict per problem, like
            `slotq.requests.RequestValidationError`.
    """

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        super().__init__(f"invalid response format: {summary}")


@dataclass(frozen=True)
class ResponseFormat:
    """A validated response format with its compiled validator or pattern."""

    type: str
    schema: dict[str, Any] | None = None
    pattern: str | None = None
    validator: Any = field(default=None, compare=False, repr=False)
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the format as submitted; `parse_response_format` accepts it again."""
        if self.type == "regex":
            return {"type": "regex", "pattern": self.pattern}
        return {"type": "json_schema", "schema": self.schema}


@dataclass(frozen=True)
class FormatCheck:
    """Result of checking one output against a response format.

    Attributes:
        ok: the output complies.
        parsed: for JSON, the value found (also when it fails the schema, so it can be
            inspected), else None. For a regex, the named groups of the match (``{}`` without
            named groups), or None when it did not match.
        source: where the value was found: ``whole``, ``fenced`` or ``embedded``; None when no
            JSON value was found or the format is a regex.
        reason: why the output does not comply; None when it does.
    """

    ok: bool
    parsed: Any = None
    source: str | None = None
    reason: str | None = None

    def result_fields(self) -> dict[str, Any]:
        """Return the keys that `JobRepository.complete_job` stores for this check."""
        return {
            "format_ok": self.ok,
            "parsed_output": self.parsed,
            "format_source": self.source,
            "format_error": self.reason,
        }


def parse_response_format(obj: Any, field_path: str = "response_format") -> ResponseFormat:
    """Validate a decoded ``response_format`` and compile its schema or pattern.

    Args:
        obj: the decoded JSON value.
        field_path: name of the field in error messages, such as ``batch.response_format``.

    Raises:
        ResponseFormatError: naming each invalid field, its value and what is allowed.
    """
    if not isinstance(obj, dict):
        raise _error(field_path, obj, "must be an object with a type of json_schema or regex")
    kind = obj.get("type")
    if kind not in FORMAT_TYPES:
        raise _error(f"{field_path}.type", kind, "must be one of " + ", ".join(FORMAT_TYPES))

    unknown = [key for key in obj if key not in FORMAT_FIELDS[kind]]
    if unknown:
        raise ResponseFormatError(
            [
                _detail(f"{field_path}.{key}", obj[key], "unknown field; allowed fields: " + ", ".join(FORMAT_FIELDS[kind]))
                for key in unknown
            ]
        )

    if kind == "regex":
        return _parse_regex(obj.get("pattern"), f"{field_path}.pattern")
    return _parse_schema(obj.get("schema"), f"{field_path}.schema")


def check_output(text: str, response_format: ResponseFormat) -> FormatCheck:
    """Check one generated output against ``response_format``.

    Invalid or missing output gives a failed `FormatCheck`, not an exception.
    """
    if response_format.type == "regex":
        return _check_regex(text, response_format)
    return _check_json(text, response_format)


def _parse_regex(pattern: Any, field_path: str) -> ResponseFormat:
    if not isinstance(pattern, str) or not pattern:
        raise _error(field_path, pattern, "must be a non-empty string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _error(field_path, f"<{len(pattern)} characters>", f"must be at most {MAX_PATTERN_CHARS} characters long")

    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise _error(field_path, pattern, f"is not a valid Python regular expression: {error}") from error
    # NOTE: Python's re has no time limit. A pattern with catastrophic backtracking can make
    # one output check slow, and only the batch's own submitter is affected.
    return ResponseFormat(type="regex", pattern=pattern, regex=compiled)


def _parse_schema(schema: Any, field_path: str) -> ResponseFormat:
    if not isinstance(schema, (dict, bool)):
        raise _error(field_path, schema, "must be a JSON Schema (an object or a boolean)")
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        raise _error(field_path, f"<{size} bytes>", f"must be at most {MAX_SCHEMA_BYTES} bytes as compact UTF-8 JSON")

    validator_class = jsonschema.Draft202012Validator
    if isinstance(schema, dict) and "$schema" in schema:
        validator_class = validator_for(schema, default=None)
    if validator_class is None:
        raise _error(
            f"{field_path}.$schema",
            schema.get("$schema"),
            "names an unknown JSON Schema dialect; use a draft URI such as "
            "https://json-schema.org/draft/2020-12/schema, or leave $schema out",
        )

    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as error:
        where = _schema_path(field_path, error.absolute_path)
        raise _error(where, error.instance, f"is not a valid JSON Schema: {error.message}") from error

    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return ResponseFormat(type="json_schema", schema=schema, validator=validator)


def _check_regex(text: str, response_format: ResponseFormat) -> FormatCheck:
    match = response_format.regex.fullmatch(text.strip())
    if match is None:
        return FormatCheck(ok=False, reason="output does not match the pattern as a whole")
    return FormatCheck(ok=True, parsed=match.groupdict())


def _check_json(text: str, response_format: ResponseFormat) -> FormatCheck:
    first_failure: FormatCheck | None = None
    whole_error: str | None = None

    for source, value, parse_error in _json_candidates(text):
        if parse_error is not None:
            whole_error = parse_error
            continue
        reason = _schema_failure(response_format.validator, value)
        if reason is None:
            return FormatCheck(ok=True, parsed=value, source=source)
        if first_failure is None:
            first_failure = FormatCheck(ok=False, parsed=value, source=source, reason=_cut(reason))

    if first_failure is not None:
        return first_failure
    return FormatCheck(ok=False, reason=_cut(f"no JSON value found in the output; as a whole: {whole_error}"))


def _json_candidates(text: str):
    """Yield ``(source, value, parse_error)`` for each JSON candidate, in order of preference.

    The first item is always the whole text; it carries the parse error when the text is not
    JSON. Later items are only values that parsed.
    """
    stripped = text.strip()
    try:
        yield "whole", _loads(stripped), None
        return
    except ValueError as error:
        yield "whole", None, _describe_parse_error(error)

    tried = 0
    for match in _FENCED_BLOCK.finditer(text):
        tried += 1
        if tried > MAX_CANDIDATES:
            return
        try:
            yield "fenced", _loads(match.group(2).strip()), None
        except ValueError:
            continue

    for value in _embedded_values(text, MAX_CANDIDATES - tried):
        yield "embedded", value, None


def _embedded_values(text: str, limit: int):
    """Yield the outermost objects and arrays that parse, scanning left to right."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    position = 0
    attempts = 0
    while attempts < limit:
        match = _VALUE_START.search(text, position)
        if match is None:
            return
        attempts += 1
        try:
            value, end = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            position = match.start() + 1
            continue
        yield value
        position = end


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as error:
        raise ValueError("JSON is nested too deeply") from error


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and the store could not save them.
    raise ValueError(f"{name} is not valid JSON")


def _describe_parse_error(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return str(error)


def _schema_failure(validator: Any, value: Any) -> str | None:
    """Return ``"<json path>: <message>"`` for the most relevant schema error, or None."""
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except Unresolvable as failure:
        return f"the schema has a $ref that cannot be resolved: {failure}"
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


def _schema_path(prefix: str, path: Any) -> str:
    parts = [str(part) for part in path]
    return ".".join([prefix, *parts]) if parts else prefix


def _cut(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "…"


def _detail(field_path: str, value: Any, message: str) -> dict[str, Any]:
    if isinstance(value, str) and len(value) > 64:
        value = value[:64] + "…"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        value = value if len(text) <= 64 else f"<{type(value).__name__} of {len(value)} items>"
    return {"field": field_path, "value": value, "message": message}


def _error(field_path: str, value: Any, message: str) -> ResponseFormatError:
    return ResponseFormatError([_detail(field_path, value, message)])
