"""The record of one generation, as both runners return it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Generation:
    """One prompt's output under one arm, with its measurements.

    Attributes:
        item_id: the prompt's id in the data set.
        text: the output, or None when the generation failed.
        error: why it failed, or None.
        latency_ms: engine wall-clock ms of prefill, optimisation and decoding of the batch that
            contained the prompt, without the validation check (the job's ``timings_ms.total``
            in service mode).
        compute_ms: worker time attributed to this prompt: ``latency_ms`` divided by the batch size.
        timings_ms: the engine's stage timings.
        batch_size: prompts decoded together with this one (1 in service mode).
        delta_norm: L2 norm of the delta decoded with.
        loss_trace: prompt loss at delta_0..delta_T.
        output_tokens: tokens generated.
        finish_reason: "stop" or "length".
        overfit: whether the validation check flagged the delta; None when not checked
            (steps = 0, or service mode without the field).
        validation_loss_change: relative rise of the validation loss, or None.
        validation_ms: wall-clock ms of the validation check of the batch, or None.
        wall_ms: client-side ms from submission to the finished job (service mode only).
    """

    item_id: str
    text: str | None
    error: str | None = None
    latency_ms: float | None = None
    compute_ms: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    delta_norm: float | None = None
    loss_trace: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    finish_reason: str | None = None
    overfit: bool | None = None
    validation_loss_change: float | None = None
    validation_ms: float | None = None
    wall_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
