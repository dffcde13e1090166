"""Turning prompts into one left-padded batch of token ids."""

from dataclasses import dataclass

import torch

Prompt = str | list[dict]


@dataclass(frozen=True)
class PromptBatch:
    """Token ids of several prompts, left-padded to one length.

    Attributes:
        input_ids: [batch, seq]; padded slots hold `pad_token_id`.
        attention_mask: [batch, seq]; 1 for real tokens, 0 for padding.
        position_ids: [batch, seq]; each prompt's positions count from 0 at its first real token.
        lengths: real tokens per prompt.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Return the token ids of one prompt.

    A string is tokenized as it is, with the tokenizer's special tokens. A list of chat messages
    goes through the tokenizer's chat template, ending with the assistant's turn.
    """
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_prompt_tokens(tokenizer, prompt: Prompt) -> int:
    """Return how many tokens a prompt takes, after the chat template for message lists."""
    return len(encode_prompt(tokenizer, prompt))


def pad_token_id(tokenizer) -> int:
    """Return the id used for padding. Models without a pad token (GPT-2) pad with EOS.

    Padded slots are masked out everywhere, so the id only has to be a valid token.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def left_pad(token_lists: list[list[int]], pad_id: int, device: torch.device) -> PromptBatch:
    """Stack prompts of different lengths, padding on the left so all end at the last column."""
    lengths = [len(tokens) for tokens in token_lists]
    width = max(lengths)

    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, width - len(tokens) :] = 1

    return PromptBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=positions_from_mask(attention_mask).to(device),
        lengths=lengths,
    )


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [batch, seq] for any padding: real tokens count from 0, padding gets 0."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
