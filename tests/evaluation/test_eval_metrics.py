import pytest

from slotq.evaluation.metrics import extract_final_number, normalize_number, parse_json_output, score_form, score_gsm8k


@pytest.mark.parametrize("text, expected", [
    ("18", "18"),
    ("$1,000.00", "1000"),
    ("12.50", "12.5"),
    ("7.0", "7"),
    ("-3", "-3"),
    ("42.", "42"),
    ("abc", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("output, expected", [
    ("She pays 3 * 6 = 18 dollars.\nThe answer is 18.", "18"),
    ("Total: $1,234.00", "1234"),
    ("So the result is -7", "-7"),
    ("Pages 3-5 were read, 12.50 in total", "12.5"),
    ("We need 3, 4, and 5 apples", "5"),
    ("x2 is a label, not a number", None),
    ("no digits here", None),
    ("", None),
    ("答えは 1,500 円です。", "1500"),
])
def test_extract_final_number(output, expected):
    assert extract_final_number(output) == expected


def test_gsm8k_match_with_commas():
    score = score_gsm8k("So he earns $1,000.", {"answer": "1,000"})
    assert score["exact_match"] is True
    assert score["answer_found"] is True
    assert score["extracted"] == "1000"


def test_gsm8k_last_number_wrong():
    score = score_gsm8k("First 18, but finally 20", {"answer": "18"})
    assert score["exact_match"] is False
    assert score["extracted"] == "20"


def test_gsm8k_no_number():
    score = score_gsm8k("I do not know", {"answer": "18"})
    assert score["exact_match"] is False
    assert score["answer_found"] is False


SCHEMA = {
    "type": "object",
    "required": ["name", "quantity"],
    "properties": {"name": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
}


def test_form_fenced_json_valid():
    output = 'Here it is:\n```json\n{"name": "ボールペン", "quantity": 20}\n```'
    score = score_form(output, SCHEMA)
    assert score["json_parsed"] is True
    assert score["schema_valid"] is True
    assert score["schema_errors"] == []


def test_form_json_breaks_schema():
    score = score_form('{"name": "pen", "quantity": 0}', SCHEMA)
    assert score["json_parsed"] is True
    assert score["schema_valid"] is False
    assert "quantity" in score["schema_errors"][0]


def test_form_not_json():
    score = score_form("name: pen, quantity: 2", SCHEMA)
    assert score["json_parsed"] is False
    assert score["schema_valid"] is False


def test_json_inside_prose():
    value, parsed = parse_json_output('Sure! {"a": 1} Hope that helps.')
    assert parsed
    assert value == {"a": 1}
