"""Autoregressive decoding with delta added to the final hidden state at every step.

The loop continues from the prompt's key/value cache, so the prompt is never run through the
transformer body again.
"""

from dataclasses import dataclass

import torch

from slot_core.compat import run_body
from slot_core.decoding import DecodingConfig, TokenSampler
from slot_core.head import LMHead

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
REPLACEMENT_CHARACTER = "\ufffd"


@dataclass
class DecodedAnswer:
    """One prompt's answer. `token_ids` includes the end-of-sequence token if one was produced."""

    token_ids: list[int]
    text: str
    finish_reason: str
    seed: int


class _Answer:
    """Mutable decoding state of one prompt."""

    def __init__(self, config: DecodingConfig, sampler: TokenSampler):
        self.config = config
        self.sampler = sampler
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def decode(body, head: LMHead, tokenizer, cache, last_hidden, attention_mask, last_positions,
           delta, configs: list[DecodingConfig], stop_token_ids: set[int], pad_id: int) -> list[DecodedAnswer]:
    """Decode one answer per prompt.

    Args:
        body: the model's transformer body.
        cache: key/value cache of the prompts, extended in place (it belongs to this call).
        last_hidden: final hidden state at each prompt's last token, [batch, hidden].
        attention_mask: the prompts' mask, [batch, seq].
        last_positions: position id of each prompt's last token, [batch].
        delta: [batch, hidden] float32, added before the head at every step.
        stop_token_ids: tokens that end an answer (end of sequence, end of turn).
        pad_id: token fed for answers that already finished, masked out of attention.
    """
    device = last_hidden.device
    answers = [_Answer(config, TokenSampler(config, device)) for config in configs]
    hidden = last_hidden  # [batch, hidden]
    mask = attention_mask
    positions = last_positions

    for _ in range(max(config.max_new_tokens for config in configs)):
        logits = head.logits(hidden.float() + delta)  # [batch, vocab]
        next_tokens = [_advance(answer, logits[row], tokenizer, stop_token_ids, pad_id)
                       for row, answer in enumerate(answers)]
        if all(answer.done for answer in answers):
            break

        step_mask = torch.tensor([[0 if answer.done else 1] for answer in answers], device=device)
        mask = torch.cat([mask, step_mask.to(mask.dtype)], dim=1)  # [batch, seq + 1]
        positions = positions + 1
        step_ids = torch.tensor(next_tokens, device=device).unsqueeze(1)  # [batch, 1]
        with torch.no_grad():
            step_hidden, cache = run_body(body, step_ids, mask, positions.unsqueeze(1), cache)
        hidden = step_hidden[:, -1]

    return [_finish(answer, tokenizer) for answer in answers]


def _advance(answer: _Answer, logits, tokenizer, stop_token_ids, pad_id) -> int:
    """Choose and record one token for an unfinished answer; return the token to feed next."""
    if answer.done:
        return pad_id

    token = answer.sampler.choose(logits)
    answer.token_ids.append(token)
    if token in stop_token_ids or _contains_stop(answer, tokenizer):
        answer.finish_reason = FINISH_STOP
    elif len(answer.token_ids) >= answer.config.max_new_tokens:
        answer.finish_reason = FINISH_LENGTH
    return token


def _contains_stop(answer: _Answer, tokenizer) -> bool:
    if not answer.config.stop:
        return False
    text = tokenizer.decode(answer.token_ids, skip_special_tokens=True)
    return any(stop in text for stop in answer.config.stop)


def _finish(answer: _Answer, tokenizer) -> DecodedAnswer:
    text = tokenizer.decode(answer.token_ids, skip_special_tokens=True)
    if answer.finish_reason != FINISH_STOP:
        # Byte-level tokenizers can stop in the middle of a multi-byte character, which decodes
        # to U+FFFD; an answer cut by max_new_tokens drops that incomplete tail.
        text = text.rstrip(REPLACEMENT_CHARACTER)
    cut = [text.find(stop) for stop in answer.config.stop if stop in text]
    if cut:
        text = text[: min(cut)]
    return DecodedAnswer(
        token_ids=answer.token_ids,
        text=text,
        finish_reason=answer.finish_reason or FINISH_LENGTH,
        seed=answer.sampler.seed,
    )
