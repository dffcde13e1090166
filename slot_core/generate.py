"""SLOT generation: one prefill, delta optimisation, then decoding with delta."""

import time
from dataclasses import dataclass, field

import torch

from slot_core.compat import body_of, run_body
from slot_core.config import SlotConfig
from slot_core.decode import decode
from slot_core.decoding import DecodingConfig
from slot_core.errors import PromptTooLongError, SlotConfigError
from slot_core.head import read_head
from slot_core.optimize import DEFAULT_MEMORY_BUDGET_MB, DeltaFit, fit_delta
from slot_core.prompts import Prompt, PromptBatch, encode_prompt, left_pad, pad_token_id


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt with its own SLOT and decoding settings, for batches of mixed jobs."""

    prompt: Prompt
    slot: SlotConfig = field(default_factory=SlotConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


@dataclass
class GenerationResult:
    """One prompt's answer and the measurements of the run that produced it.

    Attributes:
        text: the answer, without special tokens, cut before the first stop string.
        delta: the delta used for decoding, float32 [hidden], on the CPU. It is the fitted delta
            unless `decode_batch` was given others.
        delta_norm: L2 norm of delta.
        loss_trace: prompt loss at delta_0..delta_T; shorter than steps + 1 if optimisation diverged.
        prompt_tokens: tokens of the prompt, after the chat template.
        output_tokens: tokens generated, an end-of-sequence token included.
        finish_reason: "stop" (end of sequence or stop string) or "length".
        head_path: "closed_form" or "autograd".
        steps_run: AdamW steps applied to the returned delta.
        diverged_at: the step whose loss or delta was not finite, or None.
        seed: the sampler's seed, so a sampled answer can be reproduced.
        timings_ms: wall-clock ms of "prefill", "optimize", "decode" and "total", shared by the
            prompts of one batch.
    """

    text: str
    delta: torch.Tensor
    delta_norm: float
    loss_trace: list[float]
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    head_path: str
    steps_run: int
    diverged_at: int | None
    seed: int
    timings_ms: dict[str, float]

    def to_dict(self) -> dict:
        """Return every field except the raw delta, as JSON-ready values."""
        fields = dict(self.__dict__)
        fields.pop("delta")
        fields["timings_ms"] = dict(self.timings_ms)
        return fields


def generate(model, tokenizer, prompts: list[Prompt], config: SlotConfig = SlotConfig(),
             max_new_tokens: int = 64, *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, stop: list[str] | None = None,
             memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> list[GenerationResult]:
    """Answer each prompt with its own delta, fitted by SLOT.

    Args:
        model: a Hugging Face causal LM, not modified.
        tokenizer: its tokenizer, not modified.
        prompts: strings (tokenized as they are) or chat message lists (chat template applied).
        config: SLOT settings; steps=0 is plain decoding.
        max_new_tokens: tokens to generate at most per prompt.
        temperature: 0 decodes greedily; above 0 samples.
        top_p: nucleus mass for sampling, in (0, 1].
        seed: sampler seed; every prompt uses it, so each answer matches a run of that prompt alone.
        stop: strings that end an answer.
        memory_budget_mb: MiB for cached prompt logits during optimisation.

    Raises:
        SlotConfigError: a decoding setting is out of range.
        PromptTooLongError: a prompt plus max_new_tokens exceeds the model's context.
    """
    decoding = DecodingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              seed=seed, stop=tuple(stop or ()))
    requests = [GenerationRequest(prompt, config, decoding) for prompt in prompts]
    return generate_batch(model, tokenizer, requests, memory_budget_mb)


@dataclass
class PreparedBatch:
    """A batch after prefill and delta optimisation, ready to decode.

    Attributes:
        requests: the batch's requests, in order.
        fit: the fitted deltas and their loss traces.
        timings_ms: "prefill" and "optimize" wall-clock ms so far.
    """

    requests: list[GenerationRequest]
    fit: DeltaFit
    timings_ms: dict[str, float]
    _prompts: PromptBatch
    _last_hidden: torch.Tensor  # [batch, hidden]
    _cache: object
    _pad_id: int
    _started: float
    _decoded: bool = False


def generate_batch(model, tokenizer, requests: list[GenerationRequest],
                   memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> list[GenerationResult]:
    """Answer a batch of prompts, each with its own SLOT and decoding settings."""
    prepared = prepare_batch(model, tokenizer, requests, memory_budget_mb)
    return decode_batch(model, tokenizer, prepared)


def prepare_batch(model, tokenizer, requests: list[GenerationRequest],
                  memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> PreparedBatch:
    """Run the prefill once and fit each prompt's delta; decoding is left to `decode_batch`.

    Raises:
        SlotConfigError: a prompt encodes to no tokens.
        PromptTooLongError: a prompt plus its max_new_tokens exceeds the model's context.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    token_lists = [encode_prompt(tokenizer, request.prompt) for request in requests]
    _check_context(model, token_lists, requests)
    pad_id = pad_token_id(tokenizer)
    prompts = left_pad(token_lists, pad_id, device)

    with torch.no_grad():
        hidden, cache = run_body(body_of(model), prompts.input_ids, prompts.attention_mask,
                                 prompts.position_ids)  # [batch, seq, hidden]
    prefilled = time.perf_counter()

    fit = fit_delta(read_head(model), hidden, prompts.input_ids, prompts.attention_mask,
                    [request.slot for request in requests], memory_budget_mb)
    optimized = time.perf_counter()

    return PreparedBatch(
        requests=list(requests),
        fit=fit,
        timings_ms={"prefill": _ms(started, prefilled), "optimize": _ms(prefilled, optimized)},
        _prompts=prompts,
        _last_hidden=hidden[:, -1].clone(),  # a copy, so the full hidden states can be freed
        _cache=cache,
        _pad_id=pad_id,
        _started=started,
    )


def decode_batch(model, tokenizer, prepared: PreparedBatch,
                 deltas: torch.Tensor | None = None) -> list[GenerationResult]:
    """Decode every prompt of a prepared batch, once.

    Args:
        deltas: [batch, hidden] float32 to decode with in place of the fitted ones, for example an
            earlier step chosen by a validation check. None decodes with `prepared.fit.delta`.

    Raises:
        RuntimeError: the batch was already decoded (its key/value cache has been extended).
    """
    if prepared._decoded:
        raise RuntimeError("this prepared batch was already decoded; prepare it again")
    prepared._decoded = True
    decode_started = time.perf_counter()
    delta = prepared.fit.delta if deltas is None else deltas.to(prepared.fit.delta)

    answers = decode(
        body_of(model), read_head(model), tokenizer, prepared._cache,
        last_hidden=prepared._last_hidden, attention_mask=prepared._prompts.attention_mask,
        last_positions=prepared._prompts.position_ids[:, -1], delta=delta,
        configs=[request.decoding for request in prepared.requests],
        stop_token_ids=stop_token_ids(model, tokenizer), pad_id=prepared._pad_id,
    )
    finished = time.perf_counter()

    timings = {
        **prepared.timings_ms,
        "decode": _ms(decode_started, finished),
        "total": _ms(prepared._started, finished),
    }
    return [
        _result(row, prepared.fit, delta[row], answers[row], prepared._prompts.lengths[row], timings)
        for row in range(len(prepared.requests))
    ]


def stop_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the generation config's EOS ids and the tokenizer's EOS."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(token) for token in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def model_context_length(model) -> int:
    """Return the number of positions the model supports (prompt plus new tokens)."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.max_position_embeddings)


def _check_context(model, token_lists, requests) -> None:
    context = model_context_length(model)
    for tokens, request in zip(token_lists, requests):
        if not tokens:
            raise SlotConfigError("prompt", request.prompt, "text that encodes to at least one token")
        if len(tokens) + request.decoding.max_new_tokens > context:
            raise PromptTooLongError(len(tokens), request.decoding.max_new_tokens, context)


def _result(row, fit, used_delta, answer, prompt_tokens, timings) -> GenerationResult:
    delta = used_delta.detach().float().cpu()  # [hidden]
    trace = [value for value in fit.loss_trace[row].tolist() if value == value]  # drop NaN padding
    return GenerationResult(
        text=answer.text,
        delta=delta,
        delta_norm=float(torch.linalg.vector_norm(delta)),
        loss_trace=trace,
        prompt_tokens=prompt_tokens,
        output_tokens=len(answer.token_ids),
        finish_reason=answer.finish_reason,
        head_path=fit.head_path,
        steps_run=fit.steps_run[row],
        diverged_at=fit.diverged_at[row],
        seed=answer.seed,
        timings_ms=dict(timings),
    )


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 3)
