"""Arms of an evaluation: the SLOT settings compared on the same prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from slotq.evaluation.errors import EvaluationError


@dataclass(frozen=True)
class Arm:
    """One SLOT setting. steps = 0 is plain decoding, whose lr is irrelevant and stored as None."""

    steps: int
    lr: float | None

    @property
    def name(self) -> str:
        """Stable key of the arm in results.jsonl, for example ``steps=5,lr=0.01``."""
        if self.is_baseline:
            return "steps=0"
        return f"steps={self.steps},lr={self.lr:g}"

    @property
    def is_baseline(self) -> bool:
        return self.steps == 0


BASELINE = Arm(steps=0, lr=None)


def parse_arms(steps_text: str, lr_text: str) -> list[Arm]:
    """Return the baseline followed by every (steps, lr) pair with steps > 0, in the given order.

    The baseline (steps = 0) is always included, because every arm is compared with it.

    Raises:
        EvaluationError: a value is not a non-negative integer (steps) or a finite number > 0 (lr).
    """
    steps_values = _parse_list("--steps", steps_text, _parse_steps)
    lr_values = _parse_list("--lr", lr_text, _parse_lr)

    arms = [BASELINE]
    for steps in steps_values:
        for lr in lr_values:
            arm = BASELINE if steps == 0 else Arm(steps=steps, lr=lr)
            if arm not in arms:
                arms.append(arm)
    return arms


def _parse_list(option: str, text: str, parse_one) -> list:
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise EvaluationError(f"invalid {option}={text!r}: must be a comma-separated list such as 0,3,5")
    return [parse_one(option, part) for part in parts]


def _parse_steps(option: str, part: str) -> int:
    if not part.isdigit():
        raise EvaluationError(f"invalid {option} value {part!r}: must be an integer >= 0")
    return int(part)


def _parse_lr(option: str, part: str) -> float:
    try:
        value = float(part)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise EvaluationError(f"invalid {option} value {part!r}: must be a finite number > 0")
    return value
