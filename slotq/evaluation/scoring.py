"""The metrics of each data set kind, and the scorer that applies them to one output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slotq.evaluation.datasets import FORM, GSM8K, IFEVAL, Dataset
from slotq.evaluation.metrics import score_form, score_gsm8k


@dataclass(frozen=True)
class Metric:
    """A proportion reported per arm.

    Attributes:
        name: key in each row's ``score`` (level "prompt"), or in its ``instructions`` entries
            (level "instruction", pooled over every checked instruction of every prompt).
        label: how the report names it.
        level: "prompt" or "instruction".
    """

    name: str
    label: str
    level: str = "prompt"


#: Per kind: the task metric first, the format-compliance metric second, then any others.
METRICS: dict[str, list[Metric]] = {
    GSM8K: [
        Metric("exact_match", "exact match of the final number"),
        Metric("answer_found", "output ends with a number"),
    ],
    IFEVAL: [
        Metric("prompt_strict", "prompt-level strict accuracy"),
        Metric("strict", "instruction-level strict accuracy", level="instruction"),
        Metric("prompt_loose", "prompt-level loose accuracy"),
        Metric("loose", "instruction-level loose accuracy", level="instruction"),
    ],
    FORM: [
        Metric("schema_valid", "output follows the JSON schema"),
        Metric("json_parsed", "output contains parseable JSON"),
    ],
}


class Scorer:
    """Scores outputs of one data set; IFEval checks are probed once at construction."""

    def __init__(self, dataset: Dataset):
        self.kind = dataset.kind
        self._schema = dataset.schema
        self._ifeval = None
        if dataset.kind == IFEVAL:
            from slotq.evaluation.ifeval import IfevalScorer

            self._ifeval = IfevalScorer(dataset.items)

    @property
    def metrics(self) -> list[Metric]:
        return METRICS[self.kind]

    @property
    def skipped_checks(self) -> dict[str, str]:
        """IFEval instruction id -> reason it is not checked; empty for other kinds."""
        return dict(self._ifeval.skipped) if self._ifeval else {}

    def score(self, output: str | None, reference: dict[str, Any]) -> dict[str, Any]:
        """Score one output. A failed generation (None) fails every metric it can be scored on."""
        text = output if output is not None else ""
        if self.kind == GSM8K:
            return score_gsm8k(text, reference)
        if self.kind == FORM:
            return score_form(text, self._schema)
        return self._ifeval.score(text, reference)
