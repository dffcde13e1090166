"""SLOT hyperparameters, validated on construction."""

import math
from dataclasses import dataclass

from slot_core.errors import SlotConfigError


@dataclass(frozen=True)
class SlotConfig:
    """Hyperparameters of the test-time optimisation of delta.

    Attributes:
        steps: AdamW steps on delta; 0 means plain decoding. Non-negative int.
        lr: AdamW learning rate, finite and > 0.
        weight_decay: AdamW decoupled weight decay, finite and >= 0.
        eps: AdamW epsilon added to the denominator, finite and > 0.
        betas: AdamW moment decay rates, each in [0, 1).
    """

    steps: int = 5
    lr: float = 0.1
    weight_decay: float = 1e-8
    eps: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        _check_int("steps", self.steps, minimum=0)
        _check_float("lr", self.lr, "a finite number > 0", lambda v: v > 0)
        _check_float("weight_decay", self.weight_decay, "a finite number >= 0", lambda v: v >= 0)
        _check_float("eps", self.eps, "a finite number > 0", lambda v: v > 0)
        _check_betas(self.betas)


def _check_int(field: str, value: object, minimum: int) -> None:
    # bool is a subclass of int, and True must not pass as one step.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SlotConfigError(field, value, f"an integer >= {minimum}")


def _check_float(field: str, value: object, allowed: str, predicate) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SlotConfigError(field, value, allowed)
    if not math.isfinite(value) or not predicate(value):
        raise SlotConfigError(field, value, allowed)


def _check_betas(betas: object) -> None:
    allowed = "a pair of numbers, each in [0, 1)"
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise SlotConfigError("betas", betas, allowed)
    for index, beta in enumerate(betas):
        _check_float(f"betas[{index}]", beta, allowed, lambda v: 0 <= v < 1)
