import threading

import pytest
import torch

import slot_core
from slot_core.compat import body_of

from .conftest import assert_delta_close, build_tiny, parameters_snapshot

PROMPTS = [
    "The weather today is",
    [{"role": "user", "content": "Name two colours."}],
    "日本語の文章を書いてください。今日は",
]


def hf_greedy_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    encoded = tokenizer(prompt, return_tensors="pt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma", "gemma2"])
def test_zero_steps_equals_plain_generate(family, fresh_tokenizer):
    model = build_tiny(family)
    if family == "gpt2":
        fresh_tokenizer.pad_token = None  # GPT-2 tokenizers have no pad token
    config = slot_core.SlotConfig(steps=0)

    (result,) = slot_core.generate(model, fresh_tokenizer, ["Once upon a time"], config, max_new_tokens=12)

    assert result.text == hf_greedy_text(model, fresh_tokenizer, "Once upon a time", 12)
    assert result.delta_norm == 0.0


def test_zero_steps_equals_plain_generate_on_bundled_model(bundled):
    model, tokenizer = bundled
    prompt = "The three primary colours are"
    (result,) = slot_core.generate(model, tokenizer, [prompt], slot_core.SlotConfig(steps=0), max_new_tokens=16)
    assert result.text == hf_greedy_text(model, tokenizer, prompt, 16)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_batch_equals_each_prompt_alone(family, fresh_tokenizer):
    model = build_tiny(family)
    config = slot_core.SlotConfig(steps=3, lr=0.05)

    batched = slot_core.generate(model, fresh_tokenizer, PROMPTS, config, max_new_tokens=10)

    for prompt, together in zip(PROMPTS, batched):
        (alone,) = slot_core.generate(model, fresh_tokenizer, [prompt], config, max_new_tokens=10)
        assert_delta_close(together.delta, alone.delta)
        assert together.text == alone.text
        assert together.output_tokens == alone.output_tokens
        assert together.prompt_tokens == alone.prompt_tokens


def test_bundled_batch_equals_alone(bundled):
    model, tokenizer = bundled
    config = slot_core.SlotConfig(steps=3, lr=0.01)
    batched = slot_core.generate(model, tokenizer, PROMPTS, config, max_new_tokens=12)
    for prompt, together in zip(PROMPTS, batched):
        (alone,) = slot_core.generate(model, tokenizer, [prompt], config, max_new_tokens=12)
        assert together.text == alone.text
        assert_delta_close(together.delta, alone.delta)


def test_seeded_sampling_is_reproducible_in_any_batch(fresh_tokenizer):
    model = build_tiny("qwen2")
    config = slot_core.SlotConfig(steps=2, lr=0.05)
    options = dict(max_new_tokens=10, temperature=1.3, top_p=0.9, seed=7)

    batched = slot_core.generate(model, fresh_tokenizer, PROMPTS, config, **options)
    (alone,) = slot_core.generate(model, fresh_tokenizer, [PROMPTS[2]], config, **options)
    (other_seed,) = slot_core.generate(model, fresh_tokenizer, [PROMPTS[2]], config,
                                       **{**options, "seed": 8})

    assert batched[2].text == alone.text
    assert alone.seed == 7
    assert other_seed.text != alone.text


def test_unseeded_sampling_reports_its_seed(fresh_tokenizer):
    model = build_tiny("llama")
    (first,) = slot_core.generate(model, fresh_tokenizer, ["Hello"], slot_core.SlotConfig(steps=0),
                                  max_new_tokens=8, temperature=1.0)
    (replay,) = slot_core.generate(model, fresh_tokenizer, ["Hello"], slot_core.SlotConfig(steps=0),
                                   max_new_tokens=8, temperature=1.0, seed=first.seed)
    assert replay.text == first.text


def test_stop_string_cuts_answer(bundled):
    model, tokenizer = bundled
    prompt = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    config = slot_core.SlotConfig(steps=0)
    (full,) = slot_core.generate(model, tokenizer, [prompt], config, max_new_tokens=30)
    stop = full.text[5:9]
    assert stop.strip(), f"answer too short to pick a stop string from: {full.text!r}"

    (stopped,) = slot_core.generate(model, tokenizer, [prompt], config, max_new_tokens=30, stop=[stop])

    assert stopped.text == full.text[: full.text.find(stop)]
    assert stopped.finish_reason == "stop"
    assert stopped.output_tokens < full.output_tokens


def test_length_finish_reason(fresh_tokenizer):
    model = build_tiny("gemma")
    (result,) = slot_core.generate(model, fresh_tokenizer, ["abc"], slot_core.SlotConfig(steps=1), max_new_tokens=3)
    assert result.output_tokens <= 3
    assert result.finish_reason in {"stop", "length"}
    assert result.finish_reason == "length" or result.output_tokens < 3


def test_result_fields(bundled):
    model, tokenizer = bundled
    (result,) = slot_core.generate(model, tokenizer, [PROMPTS[1]], slot_core.SlotConfig(steps=3, lr=0.01),
                                   max_new_tokens=8)
    fields = result.to_dict()
    assert "delta" not in fields
    assert result.delta.shape == (model.config.hidden_size,)
    assert result.delta.dtype == torch.float32
    assert fields["delta_norm"] == pytest.approx(float(torch.linalg.vector_norm(result.delta)))
    assert len(fields["loss_trace"]) == 4
    assert set(fields["timings_ms"]) >= {"prefill", "optimize", "decode", "total"}
    assert fields["prompt_tokens"] == slot_core.count_prompt_tokens(tokenizer, PROMPTS[1])
    assert 1 <= fields["output_tokens"] <= 8
    assert fields["head_path"] == "closed_form"


def test_body_runs_once_over_prompt(fresh_tokenizer):
    model = build_tiny("llama")
    lengths = []
    handle = body_of(model).register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        slot_core.generate(model, fresh_tokenizer, PROMPTS, slot_core.SlotConfig(steps=5), max_new_tokens=6)
    finally:
        handle.remove()

    assert len([n for n in lengths if n > 1]) == 1
    assert lengths[0] > 1
    assert all(n == 1 for n in lengths[1:])


def test_model_unchanged_after_calls(fresh_tokenizer):
    model = build_tiny("gemma2")
    probe = torch.tensor([[5, 6, 7, 8]])
    before_params = parameters_snapshot(model)
    with torch.no_grad():
        before_logits = model(probe).logits

    slot_core.generate(model, fresh_tokenizer, PROMPTS, slot_core.SlotConfig(steps=3, lr=0.5), max_new_tokens=5)

    for name, value in parameters_snapshot(model).items():
        assert torch.equal(value, before_params[name]), name
        assert model.get_parameter(name).grad is None, name
    with torch.no_grad():
        assert torch.equal(model(probe).logits, before_logits)
    assert not model.training


class _FailingDecodeTokenizer:
    """A tokenizer that works until the answer is decoded, to raise in the middle of generate."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def decode(self, *args, **kwargs):
        raise RuntimeError("decode failed on purpose")


def test_model_unchanged_after_failed_call(fresh_tokenizer):
    model = build_tiny("llama")
    probe = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(probe).logits
    snapshot = parameters_snapshot(model)

    with pytest.raises(RuntimeError, match="on purpose"):
        slot_core.generate(model, _FailingDecodeTokenizer(fresh_tokenizer), PROMPTS,
                           slot_core.SlotConfig(steps=3), max_new_tokens=4)

    for name, value in parameters_snapshot(model).items():
        assert torch.equal(value, snapshot[name]), name
    with torch.no_grad():
        assert torch.equal(model(probe).logits, before)
    (after,) = slot_core.generate(model, fresh_tokenizer, [PROMPTS[0]], slot_core.SlotConfig(steps=0), max_new_tokens=6)
    assert after.text == hf_greedy_text(model, fresh_tokenizer, PROMPTS[0], 6)


def test_two_threads_match_sequential_calls(fresh_tokenizer):
    model = build_tiny("qwen2")
    config = slot_core.SlotConfig(steps=3, lr=0.05)
    jobs = [[PROMPTS[0]], [PROMPTS[2], PROMPTS[1]]]
    sequential = [slot_core.generate(model, fresh_tokenizer, job, config, max_new_tokens=8) for job in jobs]

    threaded: list = [None, None]

    def run(index):
        threaded[index] = slot_core.generate(model, fresh_tokenizer, jobs[index], config, max_new_tokens=8)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    for expected, actual in zip(sequential, threaded):
        assert actual is not None
        for one, other in zip(expected, actual):
            assert one.text == other.text
            assert torch.equal(one.delta, other.delta)


def test_prompt_too_long_names_the_limits(fresh_tokenizer):
    model = build_tiny("llama")  # context of 256 positions
    with pytest.raises(slot_core.PromptTooLongError) as caught:
        slot_core.generate(model, fresh_tokenizer, ["word " * 300], max_new_tokens=10)
    assert caught.value.context_length == 256
    assert "256" in str(caught.value)
    assert caught.value.max_new_tokens == 10


def test_empty_prompt_is_rejected(fresh_tokenizer):
    model = build_tiny("llama")
    with pytest.raises(slot_core.SlotConfigError) as caught:
        slot_core.generate(model, fresh_tokenizer, [""], max_new_tokens=4)
    assert caught.value.field == "prompt"


def test_divergent_lr_still_decodes_finite_text(bundled):
    model, tokenizer = bundled
    (result,) = slot_core.generate(model, tokenizer, [PROMPTS[0]], slot_core.SlotConfig(steps=5, lr=1e38),
                                   max_new_tokens=6)
    assert result.diverged_at is not None
    assert torch.isfinite(result.delta).all()
    assert all(value == value for value in result.loss_trace)
    assert result.output_tokens >= 1


def test_default_config_lowers_prompt_loss(bundled):
    model, tokenizer = bundled
    prompts = [
        [{"role": "user", "content": "Write a short poem about the sea."}],
        [{"role": "user", "content": "次のメールから注文内容をJSONで抜き出してください。品名: ボールペン、数量: 20本。"}],
        "Explain photosynthesis in two sentences.",
        [{"role": "user", "content": "List three prime numbers greater than 10, separated by commas."}],
    ]
    results = slot_core.generate(model, tokenizer, prompts, slot_core.SlotConfig(), max_new_tokens=4)
    for result in results:
        assert result.loss_trace[-1] < result.loss_trace[0]


def test_bfloat16_model_generates(fresh_tokenizer):
    model = build_tiny("qwen2").to(torch.bfloat16)
    (result,) = slot_core.generate(model, fresh_tokenizer, [PROMPTS[1]], slot_core.SlotConfig(steps=3, lr=0.05),
                                   max_new_tokens=6)
    assert result.delta.dtype == torch.float32
    assert result.output_tokens >= 1
    assert all(value == value for value in result.loss_trace)


def test_length_cut_drops_incomplete_character(bundled):
    model, tokenizer = bundled
    prompt = [{"role": "user", "content": "日本の首都はどこですか？一文で答えてください。"}]
    for max_new_tokens in range(1, 9):
        (result,) = slot_core.generate(model, tokenizer, [prompt], slot_core.SlotConfig(steps=0),
                                       max_new_tokens=max_new_tokens)
        assert not result.text.endswith("\ufffd"), (max_new_tokens, result.text)
