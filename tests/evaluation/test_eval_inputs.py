import json

import pytest

from evaluation_support import write_jsonl
from slotq.evaluation import EvaluationError, load_dataset, parse_arms
from slotq.evaluation.arms import Arm
from slotq.evaluation.datasets import FORM, GSM8K, GSM8K_INSTRUCTION, IFEVAL


def test_arms_cross_product_with_one_baseline():
    arms = parse_arms("0,3,5", "0.01,0.1")
    assert [arm.name for arm in arms] == [
        "steps=0", "steps=3,lr=0.01", "steps=3,lr=0.1", "steps=5,lr=0.01", "steps=5,lr=0.1",
    ]


def test_arms_always_include_baseline():
    assert parse_arms("5", "0.1") == [Arm(0, None), Arm(5, 0.1)]


@pytest.mark.parametrize("steps, lr, message", [
    ("-1", "0.1", "--steps value '-1'"),
    ("3,,5", "0.1", "--steps="),
    ("3", "0", "--lr value '0'"),
    ("3", "nan", "--lr value 'nan'"),
    ("3", "fast", "--lr value 'fast'"),
])
def test_arms_reject_bad_values(steps, lr, message):
    with pytest.raises(EvaluationError, match=message):
        parse_arms(steps, lr)


def test_detects_gsm8k(gsm8k_file):
    dataset = load_dataset(gsm8k_file)
    assert dataset.kind == GSM8K
    assert len(dataset.items) == 3
    assert dataset.items[0].messages[0]["content"].endswith(GSM8K_INSTRUCTION)
    assert dataset.items[0].reference["answer"].strip()


def test_detects_ifeval_with_limit(ifeval_file):
    dataset = load_dataset(ifeval_file, limit=2)
    assert dataset.kind == IFEVAL
    assert [item.item_id for item in dataset.items] == [str(json.loads(l)["key"]) for l in ifeval_file.read_text().splitlines()[:2]]


def test_form_requires_schema(tmp_path):
    data = write_jsonl(tmp_path / "forms.jsonl", [{"messages": [{"role": "user", "content": "注文をJSONで"}]}])
    with pytest.raises(EvaluationError, match="--schema"):
        load_dataset(data)

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object"}))
    dataset = load_dataset(data, schema)
    assert dataset.kind == FORM
    assert dataset.schema == {"type": "object"}


def test_invalid_schema_rejected(tmp_path):
    data = write_jsonl(tmp_path / "forms.jsonl", [{"prompt": "fill the form"}])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "no-such-type"}))
    with pytest.raises(EvaluationError, match="not a valid JSON schema"):
        load_dataset(data, schema)


def test_missing_file_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(EvaluationError, match=f"data file not found: {missing}"):
        load_dataset(missing)


def test_bad_line_named(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(EvaluationError, match="bad.jsonl:2: not valid JSON"):
        load_dataset(data)


def test_gsm8k_answer_without_final(tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(EvaluationError, match="g.jsonl:1: field \"answer\""):
        load_dataset(data)


def test_unknown_kind(tmp_path):
    data = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    with pytest.raises(EvaluationError, match="cannot tell the data set kind"):
        load_dataset(data)


def test_duplicate_ids(tmp_path):
    record = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    data = write_jsonl(tmp_path / "dup.jsonl", [record, record])
    with pytest.raises(EvaluationError, match="appears more than once"):
        load_dataset(data)


def test_limit_must_be_positive(gsm8k_file):
    with pytest.raises(EvaluationError, match="--limit=0"):
        load_dataset(gsm8k_file, limit=0)
