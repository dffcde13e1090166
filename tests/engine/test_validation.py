import pytest
import torch

import slot_core

from .conftest import build_tiny
from .reference import reference_loss

VALIDATION_PROMPTS = [
    "The museum opens at nine.",
    [{"role": "user", "content": "Translate 'good morning' into French."}],
    "請求書を添付いたします。ご確認ください。",
]


def expected_validation_loss(model, tokenizer, delta: torch.Tensor) -> float:
    losses = []
    for prompt in VALIDATION_PROMPTS:
        ids = torch.tensor(slot_core.prompts.encode_prompt(tokenizer, prompt))
        with torch.no_grad():
            losses.append(float(reference_loss(model, ids, delta.view(1, 1, -1))))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_losses_match_reference(family, fresh_tokenizer):
    model = build_tiny(family)
    validation = slot_core.ValidationSet(model, fresh_tokenizer, VALIDATION_PROMPTS)
    delta = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 0.3

    losses = validation.losses(torch.stack([torch.zeros(32), delta]))

    assert validation.base_loss == pytest.approx(expected_validation_loss(model, fresh_tokenizer, torch.zeros(32)), rel=1e-5)
    assert float(losses[0]) == pytest.approx(validation.base_loss, rel=1e-6)
    assert float(losses[1]) == pytest.approx(expected_validation_loss(model, fresh_tokenizer, delta), rel=1e-5)


def test_non_finite_delta_has_infinite_loss(fresh_tokenizer):
    validation = slot_core.ValidationSet(build_tiny("llama"), fresh_tokenizer, VALIDATION_PROMPTS)
    losses = validation.losses(torch.full((1, 32), float("nan")))
    assert losses[0] == float("inf")


def test_empty_validation_set_rejected(fresh_tokenizer):
    with pytest.raises(ValueError, match="at least one prompt"):
        slot_core.ValidationSet(build_tiny("llama"), fresh_tokenizer, [])


def test_decode_with_other_delta(fresh_tokenizer):
    model = build_tiny("llama")
    request = slot_core.GenerationRequest("Once upon a time", slot_core.SlotConfig(steps=3, lr=0.3),
                                          slot_core.DecodingConfig(max_new_tokens=8))
    plain = slot_core.generate(model, fresh_tokenizer, ["Once upon a time"], slot_core.SlotConfig(steps=0),
                               max_new_tokens=8)[0]

    prepared = slot_core.prepare_batch(model, fresh_tokenizer, [request])
    assert prepared.fit.history.shape == (1, 4, 32)
    torch.testing.assert_close(prepared.fit.history[0, -1], prepared.fit.delta[0])
    (result,) = slot_core.decode_batch(model, fresh_tokenizer, prepared, deltas=torch.zeros(1, 32))

    assert result.text == plain.text
    assert result.delta_norm == 0.0
    assert len(result.loss_trace) == 4
    with pytest.raises(RuntimeError, match="already decoded"):
        slot_core.decode_batch(model, fresh_tokenizer, prepared)
