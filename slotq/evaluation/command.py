"""``slotq eval``: the command-line entry point of the evaluation harness."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from slotq.evaluation.errors import EvaluationError

logger = logging.getLogger(__name__)

#: Exit status for invalid options and data, as the rest of the ``slotq`` command uses it.
EXIT_USAGE = 2


def add_eval_command(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``slotq`` subparsers and return its parser."""
    parser = subparsers.add_parser(
        "eval",
        help="compare SLOT settings on a data set (GSM8K, IFEval or a form-filling set)",
        description="Run every (steps, lr) arm on the same prompts, directly on the engine or through "
        "a running API, and write results.jsonl, summary.json and report.md with plots. steps=0 (plain "
        "decoding) always runs and is the baseline. An interrupted run resumes from --out.",
    )
    parser.add_argument("--data", required=True, metavar="FILE", help="JSONL data file: GSM8K, IFEval or form-filling chat requests (kind detected from its fields)")
    parser.add_argument("--schema", metavar="FILE", help="JSON schema that form-filling outputs must follow (form-filling sets only)")
    parser.add_argument("--steps", default="0,3,5", help="comma-separated AdamW step counts (default: 0,3,5)")
    parser.add_argument("--lr", default="0.01,0.1", help="comma-separated learning rates; each pairs with every steps > 0 (default: 0.01,0.1)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate the first N prompts only (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="tokens to generate at most per prompt (default: 128)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="prompts per engine batch, or jobs in flight through the service (default: 1, one prompt per run as a worker does)")
    parser.add_argument("--through-service", metavar="URL", help="submit jobs to the API at URL instead of loading the model here")
    parser.add_argument("--out", default="eval-out", metavar="DIR", help="output folder; an existing one is resumed (default: eval-out)")
    parser.add_argument("--seed", type=int, default=0, help="decoding and bootstrap seed (default: 0)")
    parser.add_argument("--model", metavar="PATH", help="local Hugging Face model folder (engine mode; default: SLOTQ_MODEL, else the bundled model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (engine mode; default: SLOTQ_DEVICE, else auto)")
    parser.add_argument("--job-timeout", type=float, default=600.0, metavar="SECONDS", help="seconds a job may take through the service before it counts as failed (default: 600)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run_eval_command)
    return parser


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``slotq eval`` and print where the report is. Errors become one-line CLI errors."""
    from slotq.cli import CliError

    try:
        summary, out = _evaluate(args)
    except EvaluationError as error:
        raise CliError(str(error), EXIT_USAGE) from error

    print(f"report: {out / 'report.md'}")
    for arm in summary["arms"]:
        task = arm["metrics"][summary["task_metric"]]
        rate = "n/a" if task["rate"] is None else f"{task['rate']:.3f} [{task['low']:.3f}, {task['high']:.3f}]"
        print(f"{arm['arm']:>20}  {summary['task_metric']} {rate}  median latency {_ms(arm['latency_ms']['median'])}")
    return 0


def _evaluate(args: argparse.Namespace):
    from slotq.evaluation.arms import parse_arms
    from slotq.evaluation.datasets import load_dataset
    from slotq.evaluation.evaluate import EvalOptions, run_evaluation
    from slotq.logging import configure_logging
    from slotq.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    _check_positive("--max-new-tokens", args.max_new_tokens)
    _check_positive("--batch-size", args.batch_size)
    if args.job_timeout <= 0:
        raise EvaluationError(f"invalid --job-timeout={args.job_timeout!r}: must be a number of seconds > 0")
    arms = parse_arms(args.steps, args.lr)
    dataset = load_dataset(args.data, args.schema, args.limit)

    runner, model_name = _make_runner(args, settings)
    options = EvalOptions(
        out=Path(args.out),
        arms=arms,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        model=model_name,
        overfit_tolerance=settings.overfit_tolerance,
        progress=not args.no_progress,
    )
    return run_evaluation(dataset, runner, options), options.out


def _make_runner(args: argparse.Namespace, settings):
    if args.through_service:
        from slotq.evaluation.service_runner import ServiceRunner

        runner = ServiceRunner(args.through_service, args.max_new_tokens, seed=args.seed, job_timeout_s=args.job_timeout)
        return runner, f"served by {args.through_service}"

    from slot_core import ModelLoadError, load_model, model_display_name
    from slotq.evaluation.engine_runner import EngineRunner
    from slotq.guardrails import load_validation_prompts

    device = args.device or settings.device
    model_path = args.model or settings.model
    try:
        model, tokenizer = load_model(model_path, device=None if device == "auto" else device)
    except ModelLoadError as error:
        raise EvaluationError(str(error)) from error
    try:
        validation_prompts = load_validation_prompts(settings.validation_prompts)
    except ValueError as error:
        raise EvaluationError(f"invalid SLOTQ_VALIDATION_PROMPTS file: {error}") from error
    runner = EngineRunner(model, tokenizer, args.max_new_tokens, seed=args.seed,
                          overfit_tolerance=settings.overfit_tolerance, validation_prompts=validation_prompts)
    return runner, model_display_name(model_path)


def _check_positive(option: str, value: int) -> None:
    if value < 1:
        raise EvaluationError(f"invalid {option}={value!r}: must be an integer >= 1")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:.2f} s"
