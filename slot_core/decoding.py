"""Decoding settings and the choice of the next token."""

import math
import secrets
from dataclasses import dataclass, field

import torch

from slot_core.errors import SlotConfigError


@dataclass(frozen=True)
class DecodingConfig:
    """How one prompt's answer is decoded.

    Attributes:
        max_new_tokens: tokens to generate at most, >= 1.
        temperature: 0 for greedy decoding, else the softmax temperature (> 0, finite).
        top_p: nucleus sampling mass in (0, 1]; 1 keeps every token. Ignored when greedy.
        seed: seed of the sampler, an int >= 0; None draws one (the result reports it).
        stop: strings that end the answer; the answer is cut before the first one found.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise SlotConfigError("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise SlotConfigError("temperature", self.temperature, "a finite number >= 0")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise SlotConfigError("top_p", self.top_p, "a number in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise SlotConfigError("seed", self.seed, "an integer >= 0 or None")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise SlotConfigError("stop", self.stop, "a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


class TokenSampler:
    """Chooses next tokens for one prompt, with its own random generator.

    Each prompt owns its generator, so a sampled answer with a given seed is the same alone or
    in any batch.
    """

    def __init__(self, config: DecodingConfig, device: torch.device):
        self.config = config
        self.seed = config.seed if config.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)

    def choose(self, logits: torch.Tensor) -> int:
        """Return the next token id from one prompt's logits [vocab] (float32)."""
        if self.config.greedy:
            return int(torch.argmax(logits))

        scaled = logits / self.config.temperature
        if self.config.top_p < 1:
            scaled = _keep_top_p(scaled, self.config.top_p)
        probabilities = torch.softmax(scaled, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


def _keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask all but the smallest set of most likely tokens whose probability mass reaches top_p."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # Keep a token when the mass before it is still below top_p; the most likely token always stays.
    remove_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    remove = torch.zeros_like(remove_sorted).scatter(0, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
