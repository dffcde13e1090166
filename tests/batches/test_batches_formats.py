"""Unit tests of response formats: parsing them and checking outputs against them."""

from __future__ import annotations

import pytest

from slotq.formats import MAX_PATTERN_CHARS, FormatCheck, ResponseFormatError, check_output, parse_response_format

ORDER_SCHEMA = {
    "type": "object",
    "required": ["品名", "数量"],
    "additionalProperties": False,
    "properties": {
        "品名": {"type": "string"},
        "数量": {"type": "integer", "minimum": 1},
        "納期": {"type": "string", "format": "date"},
    },
}


@pytest.fixture
def order_format():
    return parse_response_format({"type": "json_schema", "schema": ORDER_SCHEMA})


def error_fields(excinfo) -> list[str]:
    return [error["field"] for error in excinfo.value.errors]


@pytest.mark.parametrize(
    "text, source, parsed",
    [
        ('{"品名": "ボルト", "数量": 3}', "whole", {"品名": "ボルト", "数量": 3}),
        ('  \n{"品名": "ボルト", "数量": 3}\n', "whole", {"品名": "ボルト", "数量": 3}),
        ('はい。\n```json\n{"品名": "ボルト", "数量": 3}\n```\n以上です。', "fenced", {"品名": "ボルト", "数量": 3}),
        ('```\n{"品名": "紙", "数量": 1}\n```', "fenced", {"品名": "紙", "数量": 1}),
        ('答え：{"品名": "ナット", "数量": 10} です。', "embedded", {"品名": "ナット", "数量": 10}),
        ('{"品名": "文字列に}括弧{", "数量": 2} end', "embedded", {"品名": "文字列に}括弧{", "数量": 2}),
        ('{bad} then {"品名": "後", "数量": 5}', "embedded", {"品名": "後", "数量": 5}),
        ('first {"品名": "x", "数量": 0} second {"品名": "y", "数量": 2}', "embedded", {"品名": "y", "数量": 2}),
    ],
)
def test_json_found_and_valid(order_format, text, source, parsed) -> None:
    check = check_output(text, order_format)

    assert check.ok is True
    assert check.source == source
    assert check.parsed == parsed
    assert check.reason is None


def test_json_schema_failure_names_path(order_format) -> None:
    check = check_output('{"品名": "ボルト", "数量": "三"}', order_format)

    assert check.ok is False
    assert check.source == "whole"
    assert check.parsed == {"品名": "ボルト", "数量": "三"}
    assert "数量" in check.reason
    assert "'三' is not of type 'integer'" in check.reason


def test_json_missing_required_key(order_format) -> None:
    check = check_output('{"品名": "ボルト"}', order_format)

    assert check.ok is False
    assert "'数量' is a required property" in check.reason


def test_json_extra_key_rejected(order_format) -> None:
    check = check_output('{"品名": "a", "数量": 1, "備考": "x"}', order_format)

    assert check.ok is False
    assert "備考" in check.reason


def test_json_date_format_asserted(order_format) -> None:
    assert check_output('{"品名": "a", "数量": 1, "納期": "2026-02-03"}', order_format).ok is True
    bad = check_output('{"品名": "a", "数量": 1, "納期": "2026-13-45"}', order_format)
    assert bad.ok is False
    assert "date" in bad.reason


@pytest.mark.parametrize("text", ["", "ただの文章です", "{not json", "NaN", '{"a": NaN}', "```json\n{broken\n```"])
def test_json_not_found(order_format, text) -> None:
    check = check_output(text, order_format)

    assert check.ok is False
    assert check.parsed is None
    assert check.source is None
    assert check.reason.startswith("no JSON value found")


def test_whole_scalar_accepted_by_scalar_schema() -> None:
    response_format = parse_response_format({"type": "json_schema", "schema": {"type": "integer"}})

    assert check_output(" 42 ", response_format) == FormatCheck(ok=True, parsed=42, source="whole")


def test_reason_is_capped(order_format) -> None:
    check = check_output('{"品名": "' + "長" * 5000 + '", "数量": "x"}', order_format)

    assert len(check.reason) <= 500


def test_result_fields_for_complete_job(order_format) -> None:
    fields = check_output('{"品名": "a", "数量": 1}', order_format).result_fields()

    assert fields == {"format_ok": True, "parsed_output": {"品名": "a", "数量": 1}, "format_source": "whole", "format_error": None}


def test_regex_full_match_strips_whitespace() -> None:
    response_format = parse_response_format({"type": "regex", "pattern": r"(?P<数量>\d+)個"})

    assert check_output(" 12個\n", response_format) == FormatCheck(ok=True, parsed={"数量": "12"})
    partial = check_output("12個です", response_format)
    assert partial.ok is False
    assert "whole" in partial.reason


def test_regex_without_groups_parses_to_empty_dict() -> None:
    response_format = parse_response_format({"type": "regex", "pattern": "はい|いいえ"})

    assert check_output("はい", response_format).parsed == {}
    assert check_output("はいはい", response_format).ok is False


def test_to_dict_round_trip(order_format) -> None:
    assert parse_response_format(order_format.to_dict()) == order_format
    regex = parse_response_format({"type": "regex", "pattern": "a+"})
    assert parse_response_format(regex.to_dict()) == regex


def test_schema_dialect_from_dollar_schema() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}]}

    response_format = parse_response_format({"type": "json_schema", "schema": draft7})

    assert type(response_format.validator).__name__ == "Draft7Validator"
    assert check_output('["a", 1]', response_format).ok is True
    assert check_output("[1]", response_format).ok is False


@pytest.mark.parametrize(
    "body, field",
    [
        (None, "response_format"),
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.schema"),
        ({"type": "json_schema", "schema": "object"}, "response_format.schema"),
        ({"type": "json_schema", "schema": {"type": "objectt"}}, "response_format.schema.type"),
        ({"type": "json_schema", "schema": {"minimum": "one"}}, "response_format.schema.minimum"),
        ({"type": "json_schema", "schema": {"$schema": "https://example.invalid/dialect"}}, "response_format.schema.$schema"),
        ({"type": "json_schema", "schema": {}, "strict": True}, "response_format.strict"),
        ({"type": "regex"}, "response_format.pattern"),
        ({"type": "regex", "pattern": ""}, "response_format.pattern"),
        ({"type": "regex", "pattern": "(unclosed"}, "response_format.pattern"),
        ({"type": "regex", "pattern": "a" * (MAX_PATTERN_CHARS + 1)}, "response_format.pattern"),
        ({"type": "regex", "pattern": "a", "schema": {}}, "response_format.schema"),
    ],
)
def test_invalid_formats_name_field(body, field) -> None:
    with pytest.raises(ResponseFormatError) as excinfo:
        parse_response_format(body)

    assert field in error_fields(excinfo)
    assert all(error["message"] for error in excinfo.value.errors)


def test_field_prefix_used() -> None:
    with pytest.raises(ResponseFormatError) as excinfo:
        parse_response_format({"type": "regex", "pattern": "("}, field_path="batch.response_format")

    assert error_fields(excinfo) == ["batch.response_format.pattern"]


def test_oversized_schema_rejected() -> None:
    schema = {"description": "長" * 30000}

    with pytest.raises(ResponseFormatError) as excinfo:
        parse_response_format({"type": "json_schema", "schema": schema})

    assert "bytes" in excinfo.value.errors[0]["message"]


def test_unresolvable_ref_reported_not_raised() -> None:
    response_format = parse_response_format({"type": "json_schema", "schema": {"$ref": "#/$defs/missing"}})

    check = check_output("{}", response_format)

    assert check.ok is False
    assert "$ref" in check.reason
