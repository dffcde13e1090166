"""Over-fitting checks on fitted deltas, run by workers between optimisation and decoding.

A delta is flagged as over-fitted when it raises the mean loss of held-out validation prompts by
more than a relative tolerance over their loss without delta. The policy decides what happens
to a flagged job:

- ``flag``: decode with the fitted delta and mark the job.
- ``fallback``: decode with the delta of the step (delta_0 = 0 included) whose validation loss
  was lowest, and record which step that was.
- ``reject``: fail the job with the validation losses in the reason.

Importing this module imports torch; the API never imports it.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from slot_core import DeltaFit, ValidationSet

POLICIES = ("flag", "fallback", "reject")

#: The validation prompts shipped with slot-queue, one JSON object with "messages" per line.
DEFAULT_VALIDATION_FILE = Path(__file__).parent / "data" / "validation_prompts.jsonl"


@dataclass(frozen=True)
class GuardOutcome:
    """The over-fitting check of one job.

    Attributes:
        validation_loss: mean validation loss with the fitted delta.
        validation_loss_base: mean validation loss with delta = 0.
        validation_loss_change: (validation_loss - base) / base; above the tolerance means over-fit.
        overfit: whether the fitted delta was flagged.
        policy: the policy applied.
        validation_loss_used: mean validation loss with the delta that is decoded.
        delta_step: the step whose delta is decoded (the last step, unless fallback chose another).
        rejected: true when the policy is reject and the delta was flagged.
        reason: why the job was rejected, or None.
    """

    validation_loss: float
    validation_loss_base: float
    validation_loss_change: float
    overfit: bool
    policy: str
    validation_loss_used: float
    delta_step: int
    rejected: bool
    reason: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def load_validation_prompts(path: str | Path | None = None) -> list[list[dict]]:
    """Read validation prompts: one JSON object per line with a "messages" chat list.

    Raises:
        ValueError: the file is empty or a line is not such an object; the message names the line.
    """
    path = Path(path) if path else DEFAULT_VALIDATION_FILE
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            prompts.append(_parse_validation_line(path, number, line))
    if not prompts:
        raise ValueError(f"validation prompt file {path} has no prompts")
    return prompts


def _parse_validation_line(path: Path, number: int, line: str) -> list[dict]:
    try:
        messages = json.loads(line).get("messages")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{path}:{number}: not a JSON object: {error}") from error
    valid = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not valid:
        raise ValueError(f"{path}:{number}: \"messages\" must be a non-empty list of {{role, content}} objects")
    return messages


def check_fit(fit: DeltaFit, validation: ValidationSet, policies: list[str],
              tolerance: float) -> tuple[list[GuardOutcome], torch.Tensor]:
    """Check each row's fitted delta and choose the delta to decode with.

    Args:
        fit: the batch's fit, with its delta history.
        validation: the validation set of this batch (the default set unless the batch brings one).
        policies: per row, one of POLICIES.
        tolerance: largest allowed relative rise of the validation loss, for example 0.05 (5%).

    Returns:
        (one outcome per row, deltas to decode with [batch, hidden] float32)
    """
    base = validation.base_loss
    final_losses = validation.losses(fit.delta)  # [batch]
    deltas = fit.delta.clone()
    outcomes = []

    for row, policy in enumerate(policies):
        loss = float(final_losses[row])
        change = _relative_change(loss, base)
        overfit = not math.isfinite(loss) or change > tolerance
        step = fit.steps_run[row]
        loss_used = loss
        reason = None

        if overfit and policy == "fallback":
            step, loss_used = _best_step(fit, validation, row)
            deltas[row] = _delta_at(fit, row, step)
        if overfit and policy == "reject":
            reason = (f"delta over-fits the prompt: validation loss rose from {base:.4f} to {loss:.4f} "
                      f"({change:+.1%}), above the tolerance of {tolerance:.1%}; lower slot.lr or slot.steps")

        outcomes.append(GuardOutcome(
            validation_loss=loss,
            validation_loss_base=base,
            validation_loss_change=change,
            overfit=overfit,
            policy=policy,
            validation_loss_used=loss_used,
            delta_step=step,
            rejected=reason is not None,
            reason=reason,
        ))
    return outcomes, deltas


def _best_step(fit: DeltaFit, validation: ValidationSet, row: int) -> tuple[int, float]:
    """Return the step of this row's history with the lowest validation loss, and that loss."""
    losses = validation.losses(fit.history[row])  # [steps + 1]; NaN history entries score inf
    losses[0] = validation.base_loss  # delta_0 is zero by construction
    step = int(torch.argmin(losses))
    return step, float(losses[step])


def _delta_at(fit: DeltaFit, row: int, step: int) -> torch.Tensor:
    if step == 0:
        return torch.zeros_like(fit.delta[row])
    return fit.history[row, step].to(fit.delta)


def _relative_change(loss: float, base: float) -> float:
    if not math.isfinite(loss):
        return math.inf
    return (loss - base) / base if base else 0.0
