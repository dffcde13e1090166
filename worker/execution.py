"""One job on the loaded model: prompt-length check, SLOT fit, over-fitting check, decoding and,
for batch jobs with a response format, the output-format check.

Everything here runs without an open database session. The caller writes the `JobOutcome`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from slotq.requests import JobRequest, RequestValidationError, check_prompt_tokens
from slotq.settings import Settings
from worker.runtime import LoadedModel

#: Validation sets of batches with their own prompts kept per process; the least recently used goes first.
MAX_CACHED_BATCH_VALIDATION_SETS = 8


@dataclass(frozen=True)
class JobOutcome:
    """What a worker stores for a job: the result fields, or the error when the job failed.

    ``guard`` contains the over-fitting check (keys of `slotq.guardrails.GuardOutcome` plus
    ``tolerance``) for jobs with steps > 0, and is stored on success and on rejection alike.
    """

    fields: dict[str, Any] | None
    error: str | None
    guard: dict[str, Any] | None = None


class ValidationCache:
    """Validation sets for one loaded model: the default one and those of recent batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._default: Any = None
        self._batches: OrderedDict[str, Any] = OrderedDict()

    def get(self, loaded: LoadedModel, settings: Settings, batch_id: str | None,
            batch_prompts: list | None) -> Any:
        """Return the validation set of a batch that brings prompts, else the default set."""
        from slot_core import ValidationSet
        from slotq.guardrails import load_validation_prompts

        with self._lock:
            if batch_id is not None and batch_prompts:
                if batch_id not in self._batches:
                    self._batches[batch_id] = ValidationSet(loaded.model, loaded.tokenizer, batch_prompts)
                    while len(self._batches) > MAX_CACHED_BATCH_VALIDATION_SETS:
                        self._batches.popitem(last=False)
                self._batches.move_to_end(batch_id)
                return self._batches[batch_id]

            if self._default is None:
                prompts = load_validation_prompts(settings.validation_prompts)
                self._default = ValidationSet(loaded.model, loaded.tokenizer, prompts)
            return self._default


validation_cache = ValidationCache()


def execute(request: JobRequest, loaded: LoadedModel, settings: Settings,
            batch: Any | None = None) -> JobOutcome:
    """Run one job and return what to store.

    Args:
        batch: the job's batch record (`slotq.store.BatchRecord`), or None for a single job.

    Raises:
        slot_core.SlotError: the engine rejected the job (for example PromptTooLongError).
    """
    from slot_core import (
        DecodingConfig,
        GenerationRequest,
        SlotConfig,
        count_prompt_tokens,
        decode_batch,
        model_context_length,
        prepare_batch,
    )

    prompt = request.engine_prompt
    try:
        prompt_tokens = count_prompt_tokens(loaded.tokenizer, prompt)
        check_prompt_tokens(request, prompt_tokens, model_context_length(loaded.model), settings)
    except RequestValidationError as error:
        return JobOutcome(fields=None, error=str(error))

    generation = request.generation
    decoding = DecodingConfig(max_new_tokens=generation.max_new_tokens, temperature=generation.temperature,
                              top_p=generation.top_p, seed=generation.seed, stop=tuple(generation.stop))
    slot = SlotConfig(steps=request.slot.steps, lr=request.slot.lr)
    prepared = prepare_batch(loaded.model, loaded.tokenizer, [GenerationRequest(prompt, slot, decoding)])

    guard, deltas = None, None
    if request.slot.steps > 0:
        guard, deltas = _check_overfit(prepared, request, loaded, settings, batch)
        if guard["rejected"]:
            return JobOutcome(fields=None, error=guard["reason"], guard=guard)

    result = decode_batch(loaded.model, loaded.tokenizer, prepared, deltas)[0]
    fields = result_fields(result, loaded.model_name)
    fields.update(_format_fields(result.text, batch))
    return JobOutcome(fields=fields, error=None, guard=guard)


def result_fields(result: Any, model_name: str) -> dict[str, Any]:
    """Return the job-store fields of a `slot_core.GenerationResult`.

    The store encodes the delta tensor as float32 little-endian bytes and keeps the queue wait
    it measured at claim time next to these stage timings. ``model_name`` is the model this
    worker ran, which replaces the name the API recorded at submit time.
    """
    fields = result.to_dict()
    fields["delta"] = result.delta  # float32 [hidden], on the CPU
    fields["model_name"] = model_name
    return fields


def _check_overfit(prepared: Any, request: JobRequest, loaded: LoadedModel, settings: Settings,
                   batch: Any | None) -> tuple[dict[str, Any], Any]:
    from slotq.guardrails import check_fit

    batch_id = batch.id if batch is not None else None
    batch_prompts = batch.validation_prompts if batch is not None else None
    validation = validation_cache.get(loaded, settings, batch_id, batch_prompts)
    outcomes, deltas = check_fit(prepared.fit, validation, [request.slot.overfit_policy],
                                 settings.overfit_tolerance)
    guard = {**outcomes[0].to_dict(), "tolerance": settings.overfit_tolerance}
    return guard, deltas


def _format_fields(text: str, batch: Any | None) -> dict[str, Any]:
    if batch is None or not batch.response_format:
        return {}
    from slotq.formats import check_output, parse_response_format

    return check_output(text, parse_response_format(batch.response_format)).result_fields()
