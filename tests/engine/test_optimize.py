import pytest
import torch

import slot_core
from slot_core.head import read_head
from slot_core.optimize import fit_delta

from .conftest import assert_delta_close, build_tiny, pad, random_ids
from .reference import reference_fit

CONFIG = slot_core.SlotConfig(steps=4, lr=0.05)
LENGTHS = [9, 5, 13]


def test_single_prompt_matches_reference(tiny_model):
    family, model = tiny_model
    (ids,) = random_ids([11])

    fit = slot_core.optimize_delta(model, ids.unsqueeze(0), config=CONFIG)
    expected_delta, expected_trace = reference_fit(model, ids, CONFIG)

    assert fit.delta.shape == (1, model.get_output_embeddings().weight.shape[1])
    assert fit.delta.dtype == torch.float32
    assert fit.loss_trace.shape == (1, CONFIG.steps + 1)
    assert_delta_close(fit.delta[0], expected_delta)
    torch.testing.assert_close(fit.loss_trace[0], torch.tensor(expected_trace), rtol=1e-4, atol=1e-5)
    assert fit.head_path == ("autograd" if family == "gemma2" else "closed_form")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_each_prompt_alone(tiny_model, side):
    _, model = tiny_model
    sequences = random_ids(LENGTHS, seed=1)
    input_ids, mask = pad(sequences, side)

    fit = slot_core.optimize_delta(model, input_ids, mask, config=CONFIG)

    for row, sequence in enumerate(sequences):
        expected_delta, expected_trace = reference_fit(model, sequence, CONFIG)
        assert_delta_close(fit.delta[row], expected_delta)
        torch.testing.assert_close(fit.loss_trace[row], torch.tensor(expected_trace), rtol=1e-4, atol=1e-5)


def test_padding_tokens_do_not_matter():
    model = build_tiny("llama")
    sequences = random_ids(LENGTHS, seed=2)
    input_ids, mask = pad(sequences, "left", pad_id=0)
    other_ids, _ = pad(sequences, "left", pad_id=4321)

    first = slot_core.optimize_delta(model, input_ids, mask, config=CONFIG)
    second = slot_core.optimize_delta(model, other_ids, mask, config=CONFIG)

    torch.testing.assert_close(first.delta, second.delta)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_small_memory_budget_gives_same_delta(family):
    model = build_tiny(family)
    sequences = random_ids(LENGTHS, seed=3)
    input_ids, mask = pad(sequences, "left")

    roomy = slot_core.optimize_delta(model, input_ids, mask, config=CONFIG, memory_budget_mb=512)
    # 1 MiB holds neither the cached logits nor more than a couple of positions per chunk.
    tight = slot_core.optimize_delta(model, input_ids, mask, config=CONFIG, memory_budget_mb=1)

    torch.testing.assert_close(tight.delta, roomy.delta, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tight.loss_trace, roomy.loss_trace, rtol=1e-4, atol=1e-5)


def test_zero_steps_keeps_delta_zero():
    model = build_tiny("qwen2")
    (ids,) = random_ids([7])
    fit = slot_core.optimize_delta(model, ids.unsqueeze(0), config=slot_core.SlotConfig(steps=0))
    assert torch.count_nonzero(fit.delta) == 0
    assert fit.loss_trace.shape == (1, 1)


def test_rows_with_own_configs_match_single_runs():
    model = build_tiny("llama")
    sequences = random_ids([8, 12], seed=4)
    input_ids, mask = pad(sequences, "left")
    configs = [slot_core.SlotConfig(steps=2, lr=0.01), slot_core.SlotConfig(steps=5, lr=0.2)]
    hidden, _ = _hidden(model, input_ids, mask)

    fit = fit_delta(read_head(model), hidden, input_ids, mask, configs)

    for row, (sequence, config) in enumerate(zip(sequences, configs)):
        expected_delta, expected_trace = reference_fit(model, sequence, config)
        assert_delta_close(fit.delta[row], expected_delta)
        assert fit.steps_run[row] == config.steps
        trace = fit.loss_trace[row]
        torch.testing.assert_close(trace[: config.steps + 1], torch.tensor(expected_trace), rtol=1e-4, atol=1e-5)
        assert torch.isnan(trace[config.steps + 1:]).all()


def test_divergence_keeps_last_finite_delta():
    model = build_tiny("llama")
    (ids,) = random_ids([10], seed=5)
    # An absurd learning rate makes delta so large that the logits overflow to inf.
    fit = slot_core.optimize_delta(model, ids.unsqueeze(0), config=slot_core.SlotConfig(steps=5, lr=1e38))

    assert fit.diverged_at[0] is not None
    assert torch.isfinite(fit.delta).all()
    finite_trace = fit.loss_trace[0][~torch.isnan(fit.loss_trace[0])]
    assert len(finite_trace) == fit.steps_run[0] + 1
    assert torch.isfinite(finite_trace).all()


def test_input_tensors_are_not_modified():
    model = build_tiny("gpt2")
    input_ids, mask = pad(random_ids(LENGTHS, seed=6), "left")
    ids_copy, mask_copy = input_ids.clone(), mask.clone()
    slot_core.optimize_delta(model, input_ids, mask, config=CONFIG)
    assert torch.equal(input_ids, ids_copy)
    assert torch.equal(mask, mask_copy)


def _hidden(model, input_ids, mask):
    from slot_core.compat import body_of, run_body
    from slot_core.prompts import positions_from_mask

    with torch.no_grad():
        return run_body(body_of(model), input_ids, mask, positions_from_mask(mask))


def test_cached_path_falls_back_when_normaliser_underflows():
    from slot_core.objective import PromptObjective, loss_targets

    model = build_tiny("llama")
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10.0)  # base logits then span far more than 46 nats
    input_ids, mask = pad(random_ids([9, 6], seed=7), "left")
    hidden, _ = _hidden(model, input_ids, mask)
    targets = loss_targets(hidden, input_ids, mask)
    head = read_head(model)
    cached = PromptObjective(head, targets, 512 * 2**20)
    streamed = PromptObjective(head, targets, 2**20)
    assert cached.cache is not None
    assert streamed.cache is None

    # The small delta stays on the cached path; the large one moves the probability mass to tokens
    # whose cached exp(base - max) underflows, so the normaliser does too.
    for scale, underflows in ((0.01, False), (1e3, True)):
        delta = torch.randn(2, 32, generator=torch.Generator().manual_seed(1)) * scale
        assert (cached.cache.evaluate(head.delta_logits(delta), targets, True) is None) == underflows
        cached_loss, cached_grad = cached.evaluate(delta, with_grad=True)
        streamed_loss, streamed_grad = streamed.evaluate(delta, with_grad=True)
        torch.testing.assert_close(cached_loss, streamed_loss, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cached_grad, streamed_grad, rtol=1e-4, atol=1e-4)


def test_row_groups_match_one_group():
    from slot_core.optimize import _row_groups

    model = build_tiny("qwen2")
    input_ids, mask = pad(random_ids(LENGTHS, seed=8), "left")
    hidden, _ = _hidden(model, input_ids, mask)
    configs = [slot_core.SlotConfig(steps=2), slot_core.SlotConfig(steps=6, lr=0.02), slot_core.SlotConfig(steps=4)]
    # 8 MiB splits these rows into two groups whose logits are still cached.
    assert len(_row_groups(mask, 49152, 8 * 2**20)) == 2
    assert len(_row_groups(mask, 49152, 512 * 2**20)) == 1

    grouped = fit_delta(read_head(model), hidden, input_ids, mask, configs, memory_budget_mb=8)
    whole = fit_delta(read_head(model), hidden, input_ids, mask, configs, memory_budget_mb=512)

    torch.testing.assert_close(grouped.delta, whole.delta, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped.loss_trace, whole.loss_trace, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert grouped.loss_trace.shape == (3, 7)
    assert grouped.steps_run == whole.steps_run == [2, 6, 4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_keeps_delta_float32(dtype):
    # CUDA workers load bfloat16 weights; the same code path runs here on the CPU.
    reference_model = build_tiny("llama")
    half_model = build_tiny("llama").to(dtype)
    input_ids, mask = pad(random_ids(LENGTHS, seed=9), "left")

    half = slot_core.optimize_delta(half_model, input_ids, mask, config=CONFIG)
    full = slot_core.optimize_delta(reference_model, input_ids, mask, config=CONFIG)

    assert half.delta.dtype == torch.float32
    assert half.loss_trace.dtype == torch.float32
    assert torch.isfinite(half.loss_trace).all()
    for row in range(len(LENGTHS)):
        assert_delta_close(half.delta[row], full.delta[row], tolerance=0.1)
    assert next(half_model.parameters()).dtype == dtype
