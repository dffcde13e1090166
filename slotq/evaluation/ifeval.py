"""IFEval instruction checks through the ``if-verifiable`` package, offline.

``if-verifiable`` (0.1.2 when this was written) carries Google's IFEval checkers. Two of them
tokenize with NLTK data (``punkt_tab``), which is not bundled with NLTK and is never downloaded
here. Before scoring, every instruction id of the data set is probed on a sample text. An id whose
check raises ``LookupError`` (NLTK's error for missing data) is skipped for the whole run, so that
every arm is scored on the same instructions. The reason is reported per id. An id missing from the
package's registry is skipped too.

Scores follow IFEval: strict checks the output as it is; loose also accepts the output with its
first or last line removed or its ``*`` removed. Prompt-level metrics require every checked
instruction of the prompt to pass; instructions that were skipped do not count.
"""

from __future__ import annotations

import random
import re
from typing import Any

from slotq.evaluation.datasets import EvalItem
from slotq.evaluation.errors import EvaluationError

#: Text on which each instruction's check is run once before scoring, to find missing resources.
PROBE_TEXT = "This is a probe. It has two sentences, and SOME capital words."

_RESOURCE_NAME = re.compile(r"Resource '?([\w./-]+)'? not found")


class IfevalScorer:
    """Checks outputs against the IFEval instructions of a set of prompts.

    Attributes:
        skipped: instruction id -> reason it is not checked, for every id skipped in this run.
    """

    def __init__(self, items: list[EvalItem]):
        registry, self._loose_variants, self._strip_thinking = _import_package()
        self._registry = registry
        self.skipped: dict[str, str] = {}
        self._working: set[str] = set()
        for item in items:
            for instruction_id, kwargs in zip(item.reference["instruction_id_list"], item.reference["kwargs"]):
                if instruction_id not in self.skipped and instruction_id not in self._working:
                    self._probe(instruction_id, kwargs, item.reference["prompt"])

    def score(self, output: str, reference: dict[str, Any]) -> dict[str, Any]:
        """Return the prompt-level and per-instruction results of one output.

        Returns:
            ``prompt_strict`` and ``prompt_loose`` (bool, or None when every instruction of the
            prompt was skipped), ``instructions`` (``{"id", "strict", "loose"}`` per checked
            instruction) and ``skipped`` (ids not checked).
        """
        response = self._strip_thinking(output)
        variants = self._loose_variants(response) if response.strip() else []
        results, skipped = [], []

        for instruction_id, kwargs in zip(reference["instruction_id_list"], reference["kwargs"]):
            if instruction_id in self.skipped:
                skipped.append(instruction_id)
                continue
            checker = self._build(instruction_id, kwargs, reference["prompt"])
            strict = bool(response.strip()) and bool(checker.check_following(response))
            loose = any(variant.strip() and checker.check_following(variant) for variant in variants)
            results.append({"id": instruction_id, "strict": strict, "loose": bool(loose)})

        checked = bool(results)
        return {
            "prompt_strict": all(r["strict"] for r in results) if checked else None,
            "prompt_loose": all(r["loose"] for r in results) if checked else None,
            "instructions": results,
            "skipped": skipped,
        }

    def _probe(self, instruction_id: str, kwargs: dict, prompt: str) -> None:
        if instruction_id not in self._registry:
            self.skipped[instruction_id] = "not in the IFEval registry of if-verifiable"
            return
        try:
            self._build(instruction_id, kwargs, prompt).check_following(PROBE_TEXT)
        except LookupError as error:
            match = _RESOURCE_NAME.search(str(error))
            resource = match.group(1) if match else "a data resource"
            self.skipped[instruction_id] = f"NLTK resource {resource} is not installed (no download at run time)"
            return
        self._working.add(instruction_id)

    def _build(self, instruction_id: str, kwargs: dict, prompt: str):
        # Some checkers draw missing arguments from the global `random`; a fixed seed per id
        # keeps scores reproducible, and the caller's random state is restored.
        state = random.getstate()
        random.seed(instruction_id)
        try:
            checker = self._registry[instruction_id](instruction_id)
            checker.build_description(**{key: value for key, value in kwargs.items() if value is not None})
            arguments = checker.get_instruction_args()
            if arguments and "prompt" in arguments:
                checker.build_description(prompt=prompt)
        finally:
            random.setstate(state)
        return checker


def _import_package():
    try:
        import langdetect
        from if_verifiable.common import get_loose_transformations, strip_thinking
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as error:
        raise EvaluationError(
            f"IFEval scoring needs the package if-verifiable ({error}); install it with "
            "`pip install if-verifiable`"
        ) from error

    # langdetect samples randomly; a fixed seed makes the language checks deterministic.
    langdetect.DetectorFactory.seed = 0
    return INSTRUCTION_DICT, get_loose_transformations, strip_thinking
