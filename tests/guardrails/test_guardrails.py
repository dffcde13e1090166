import json

import pytest
import torch

import slot_core
from slotq import guardrails

TOLERANCE = 0.05
PROMPTS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "次のメールから注文内容をJSONで抜き出してください。品名: ボールペン、数量: 20本。"}],
    [{"role": "user", "content": "List three prime numbers greater than 10, separated by commas."}],
]


@pytest.fixture(scope="module")
def bundled():
    return slot_core.load_model(None, device="cpu")


@pytest.fixture(scope="module")
def default_validation(bundled):
    model, tokenizer = bundled
    return slot_core.ValidationSet(model, tokenizer, guardrails.load_validation_prompts())


def prepare(bundled, steps, lr):
    model, tokenizer = bundled
    requests = [slot_core.GenerationRequest(prompt, slot_core.SlotConfig(steps=steps, lr=lr),
                                            slot_core.DecodingConfig(max_new_tokens=8)) for prompt in PROMPTS]
    return slot_core.prepare_batch(model, tokenizer, requests)


def test_default_set_is_varied():
    prompts = guardrails.load_validation_prompts()
    contents = [message["content"] for prompt in prompts for message in prompt]
    assert len(prompts) >= 12
    assert any(any("\u3040" <= ch <= "\u30ff" for ch in content) for content in contents)
    assert any(content.isascii() for content in contents)


def test_default_config_not_flagged(bundled, default_validation):
    prepared = prepare(bundled, steps=5, lr=0.1)
    outcomes, deltas = guardrails.check_fit(prepared.fit, default_validation, ["flag"] * 3, TOLERANCE)
    for outcome in outcomes:
        assert not outcome.overfit, outcome
        assert outcome.delta_step == 5
    assert torch.equal(deltas, prepared.fit.delta)


def test_large_lr_flagged_and_kept(bundled, default_validation):
    prepared = prepare(bundled, steps=20, lr=1.0)
    outcomes, deltas = guardrails.check_fit(prepared.fit, default_validation, ["flag"] * 3, TOLERANCE)
    for outcome in outcomes:
        assert outcome.overfit
        assert outcome.validation_loss_change > TOLERANCE
        assert outcome.delta_step == 20
        assert not outcome.rejected
    assert torch.equal(deltas, prepared.fit.delta)


def test_fallback_decodes_better_step(bundled, default_validation):
    model, tokenizer = bundled
    prepared = prepare(bundled, steps=20, lr=1.0)
    outcomes, deltas = guardrails.check_fit(prepared.fit, default_validation, ["fallback"] * 3, TOLERANCE)

    for row, outcome in enumerate(outcomes):
        assert outcome.overfit
        assert outcome.delta_step < 20
        assert outcome.validation_loss_used < outcome.validation_loss
        expected = default_validation.losses(deltas[row : row + 1])[0]
        assert float(expected) == pytest.approx(outcome.validation_loss_used, rel=1e-5)

    results = slot_core.decode_batch(model, tokenizer, prepared, deltas=deltas)
    for result, row_delta in zip(results, deltas):
        assert torch.equal(result.delta, row_delta)


def test_reject_gives_reason(bundled, default_validation):
    prepared = prepare(bundled, steps=20, lr=1.0)
    outcomes, _ = guardrails.check_fit(prepared.fit, default_validation, ["reject", "flag", "reject"], TOLERANCE)
    assert outcomes[0].rejected
    assert "validation loss rose" in outcomes[0].reason
    assert not outcomes[1].rejected
    assert outcomes[2].rejected


def test_validation_file_errors_name_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        guardrails.load_validation_prompts(path)


def test_empty_validation_file_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        guardrails.load_validation_prompts(path)
