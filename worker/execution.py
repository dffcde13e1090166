"""Jobs on the loaded model: prompt-length check, SLOT fit, over-fitting check, decoding and, for
batch jobs with a response format, the output-format check. Several claimed jobs run as one
engine batch.

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
                    self._batches[batch_id] = ValidationSet(loaded.model, loaded.tokenizer, batch_prompts,
                                                             memory_budget_mb=settings.logits_memory_mb)
                    while len(self._batches) > MAX_CACHED_BATCH_VALIDATION_SETS:
                        self._batches.popitem(last=False)
                self._batches.move_to_end(batch_id)
                return self._batches[batch_id]

            if self._default is None:
                prompts = load_validation_prompts(settings.validation_prompts)
                self._default = ValidationSet(loaded.model, loaded.tokenizer, prompts,
                                                  memory_budget_mb=settings.logits_memory_mb)
            return self._default


validation_cache = ValidationCache()


@dataclass(frozen=True)
class WorkItem:
    """A claimed job whose stored request passed the checks, with its batch record if any."""

    request: JobRequest
    batch: Any | None = None


def execute(request: JobRequest, loaded: LoadedModel, settings: Settings,
            batch: Any | None = None) -> JobOutcome:
    """Run one job and return what to store.

    Args:
        batch: the job's batch record (`slotq.store.BatchRecord`), or None for a single job.

    Raises:
        slot_core.SlotError: the engine rejected the job.
    """
    return execute_many([WorkItem(request, batch)], loaded, settings)[0]


def execute_many(items: list[WorkItem], loaded: LoadedModel, settings: Settings) -> list[JobOutcome]:
    """Run several jobs as SLOT batches and return one outcome per job, in order.

    Jobs that share a validation set run as one engine batch: one prefill, one delta fit with
    each job's own settings, one decoding loop. Each job keeps its own delta, so its output is
    the same as when it runs alone. A job whose prompt is too long fails alone.

    Raises:
        slot_core.SlotError: the engine rejected a whole batch.
    """
    outcomes: list[JobOutcome | None] = [None] * len(items)
    groups: dict[str | None, list[int]] = {}
    for index, item in enumerate(items):
        error = _prompt_length_error(item.request, loaded, settings)
        if error is not None:
            outcomes[index] = JobOutcome(fields=None, error=error)
            continue
        groups.setdefault(_validation_key(item.batch), []).append(index)

    for indices in groups.values():
        group = [items[index] for index in indices]
        for index, outcome in zip(indices, _execute_group(group, loaded, settings)):
            outcomes[index] = outcome
    return outcomes


def _prompt_length_error(request: JobRequest, loaded: LoadedModel, settings: Settings) -> str | None:
    from slot_core import count_prompt_tokens, model_context_length

    prompt_tokens = count_prompt_tokens(loaded.tokenizer, request.engine_prompt)
    try:
        check_prompt_tokens(request, prompt_tokens, model_context_length(loaded.model), settings)
    except RequestValidationError as error:
        return str(error)
    return None


def _validation_key(batch: Any | None) -> str | None:
    """Return the batch id when the batch brings validation prompts, else None (the default set)."""
    if batch is not None and batch.validation_prompts:
        return batch.id
    return None


def _execute_group(items: list[WorkItem], loaded: LoadedModel, settings: Settings) -> list[JobOutcome]:
    from slot_core import decode_batch, prepare_batch

    prepared = prepare_batch(loaded.model, loaded.tokenizer, [_engine_request(item.request) for item in items],
                             memory_budget_mb=settings.logits_memory_mb)
    guards, deltas = _check_overfit(prepared, items, loaded, settings)
    results = decode_batch(loaded.model, loaded.tokenizer, prepared, deltas)

    outcomes = []
    for item, result, guard in zip(items, results, guards):
        if guard is not None and guard["rejected"]:
            outcomes.append(JobOutcome(fields=None, error=guard["reason"], guard=guard))
            continue
        fields = result_fields(result, loaded.model_name)
        fields.update(_format_fields(result.text, item.batch))
        outcomes.append(JobOutcome(fields=fields, error=None, guard=guard))
    return outcomes


def _engine_request(request: JobRequest):
    from slot_core import DecodingConfig, GenerationRequest, SlotConfig

    generation = request.generation
    decoding = DecodingConfig(max_new_tokens=generation.max_new_tokens, temperature=generation.temperature,
                              top_p=generation.top_p, seed=generation.seed, stop=tuple(generation.stop))
    slot = SlotConfig(steps=request.slot.steps, lr=request.slot.lr)
    return GenerationRequest(request.engine_prompt, slot, decoding)


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


def _check_overfit(prepared: Any, items: list[WorkItem], loaded: LoadedModel,
                   settings: Settings) -> tuple[list[dict[str, Any] | None], Any]:
    """Return one guard record per job (None for steps = 0) and the deltas to decode with."""
    from slotq.guardrails import check_fit

    if all(item.request.slot.steps == 0 for item in items):
        return [None] * len(items), None

    batch = items[0].batch  # every job of a group shares its validation set
    batch_id = batch.id if batch is not None else None
    batch_prompts = batch.validation_prompts if batch is not None else None
    validation = validation_cache.get(loaded, settings, batch_id, batch_prompts)
    policies = [item.request.slot.overfit_policy for item in items]
    outcomes, deltas = check_fit(prepared.fit, validation, policies, settings.overfit_tolerance)

    guards = [
        {**outcome.to_dict(), "tolerance": settings.overfit_tolerance} if item.request.slot.steps > 0 else None
        for item, outcome in zip(items, outcomes)
    ]
    return guards, deltas


def _format_fields(text: str, batch: Any | None) -> dict[str, Any]:
    if batch is None or not batch.response_format:
        return {}
    from slotq.formats import check_output, parse_response_format

    return check_output(text, parse_response_format(batch.response_format)).result_fields()
