"""A/B evaluation of SLOT settings: the same prompts through every arm, scored and compared.

An arm is one (steps, lr) pair; steps = 0 is plain decoding and the baseline of every comparison.
`run_evaluation` runs the arms directly on the engine or through the job API, appends one row per
prompt and arm to ``results.jsonl`` as each finishes, and writes ``summary.json`` and a Markdown
report with plots. ``slotq eval`` (`add_eval_command`) is the command-line entry point.
"""

from slotq.evaluation.arms import Arm, parse_arms
from slotq.evaluation.command import add_eval_command
from slotq.evaluation.datasets import Dataset, EvalItem, load_dataset
from slotq.evaluation.errors import EvaluationError
from slotq.evaluation.evaluate import EvalOptions, run_evaluation

__all__ = [
    "Arm",
    "Dataset",
    "EvalItem",
    "EvalOptions",
    "EvaluationError",
    "add_eval_command",
    "load_dataset",
    "parse_arms",
    "run_evaluation",
]
