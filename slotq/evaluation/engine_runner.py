"""Runs arms directly on the engine: one model in this process, prompts in batches.

Each batch is prepared (prefill and delta fit), checked against the validation prompts
(the shipped set unless ``SLOTQ_VALIDATION_PROMPTS`` names another) with `slotq.guardrails.check_fit` under the "flag" policy, and decoded with the fitted deltas.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from slotq.evaluation.arms import Arm
from slotq.evaluation.generation import Generation
from slotq.logging import with_ids

if TYPE_CHECKING:
    from slotq.evaluation.datasets import EvalItem

logger = logging.getLogger(__name__)


class EngineRunner:
    """Generates with a loaded model; the validation set is built once, on first use."""

    mode = "engine"

    def __init__(self, model, tokenizer, max_new_tokens: int, seed: int | None = None,
                 overfit_tolerance: float = 0.05, validation_prompts: list | None = None):
        """
        Args:
            model, tokenizer: from `slot_core.load_model`.
            max_new_tokens: tokens to generate at most per prompt.
            seed: sampler seed; decoding is greedy, so it only matters for sampled decoding.
            overfit_tolerance: largest relative rise of the validation loss that is not flagged
                (0.05 = 5%), as the workers' guardrail uses it.
            validation_prompts: chat prompts of the validation set; None reads the shipped set.
        """
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.overfit_tolerance = overfit_tolerance
        self._validation_prompts = validation_prompts
        self._validation = None
        self._warmed_up = False

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    def run(self, arm: Arm, items: list[EvalItem]) -> list[Generation]:
        """Generate every item of one batch under ``arm``.

        A batch whose prompt is too long for the context is retried one prompt at a time, so that
        only the prompts that do not fit fail.
        """
        from slot_core import PromptTooLongError

        if not self._warmed_up:
            self._warm_up(items[0])
        try:
            return self._run_batch(arm, items)
        except PromptTooLongError as error:
            if len(items) == 1:
                with_ids(logger, item_id=items[0].item_id, arm=arm.name).warning("generation failed: %s", error)
                return [Generation(item_id=items[0].item_id, text=None, error=f"PromptTooLongError: {error}")]
        return [generation for item in items for generation in self.run(arm, [item])]

    def _run_batch(self, arm: Arm, items: list[EvalItem]) -> list[Generation]:
        from slot_core import DecodingConfig, GenerationRequest, SlotConfig, decode_batch, prepare_batch

        slot = SlotConfig(steps=arm.steps, lr=arm.lr if arm.lr is not None else SlotConfig().lr)
        decoding = DecodingConfig(max_new_tokens=self.max_new_tokens, seed=self.seed)
        requests = [GenerationRequest(item.messages, slot, decoding) for item in items]

        prepared = prepare_batch(self.model, self.tokenizer, requests)
        outcomes, deltas, validation_ms = self._check(arm, prepared)
        results = decode_batch(self.model, self.tokenizer, prepared, deltas)

        generations = []
        for row, (item, result) in enumerate(zip(items, results)):
            outcome = outcomes[row] if outcomes else None
            # The stage times exclude the validation check, which runs between optimisation and
            # decoding and is reported on its own as validation_ms.
            latency = sum(result.timings_ms[stage] for stage in ("prefill", "optimize", "decode"))
            generations.append(Generation(
                item_id=item.item_id,
                text=result.text,
                latency_ms=round(latency, 3),
                compute_ms=round(latency / len(items), 3),
                timings_ms=dict(result.timings_ms),
                batch_size=len(items),
                delta_norm=result.delta_norm,
                loss_trace=result.loss_trace,
                output_tokens=result.output_tokens,
                finish_reason=result.finish_reason,
                overfit=outcome.overfit if outcome else None,
                validation_loss_change=_finite(outcome.validation_loss_change) if outcome else None,
                validation_ms=validation_ms,
            ))
        return generations

    def _warm_up(self, item: EvalItem) -> None:
        """Run one short untimed generation and build the validation set, so that one-time costs
        (lazy initialisation, first-call allocations) stay out of the first measured batch.
        """
        from slot_core import SlotConfig, generate

        self._validation_set()
        generate(self.model, self.tokenizer, [item.messages], SlotConfig(steps=1), max_new_tokens=2)
        self._warmed_up = True

    def _check(self, arm: Arm, prepared):
        """Return (outcomes, deltas, ms) of the validation check; (None, None, None) for steps = 0."""
        if arm.is_baseline:
            return None, None, None
        from slotq.guardrails import check_fit

        started = time.perf_counter()
        validation = self._validation_set()
        policies = ["flag"] * len(prepared.requests)
        outcomes, deltas = check_fit(prepared.fit, validation, policies, self.overfit_tolerance)
        return outcomes, deltas, round((time.perf_counter() - started) * 1000, 3)

    def _validation_set(self):
        if self._validation is None:
            from slot_core import ValidationSet
            from slotq.guardrails import load_validation_prompts

            prompts = self._validation_prompts or load_validation_prompts()
            self._validation = ValidationSet(self.model, self.tokenizer, prompts)
        return self._validation


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
