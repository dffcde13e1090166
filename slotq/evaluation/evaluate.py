"""The evaluation loop: run every pending (prompt, arm) pair, store it, then summarise and report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from slotq.evaluation.arms import Arm
from slotq.evaluation.datasets import Dataset, EvalItem
from slotq.evaluation.generation import Generation
from slotq.evaluation.plots import draw_plots
from slotq.evaluation.report import render_report
from slotq.evaluation.scoring import Scorer
from slotq.evaluation.store import ResultStore
from slotq.evaluation.summary import summarize

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"


class Runner(Protocol):
    """Generates outputs for a batch of prompts under one arm (`EngineRunner`, `ServiceRunner`)."""

    mode: str
    device: str

    def run(self, arm: Arm, items: list[EvalItem]) -> list[Generation]: ...


@dataclass(frozen=True)
class EvalOptions:
    """Settings of one evaluation run.

    Attributes:
        out: output folder (created if missing).
        arms: arms to run, the baseline first (see `parse_arms`).
        max_new_tokens: tokens to generate at most per prompt.
        batch_size: prompts per engine batch, or jobs in flight at once through the service.
        seed: decoding seed and bootstrap seed.
        model: name of the model, recorded with the results.
        overfit_tolerance: relative validation-loss rise above which a delta counts as over-fitted.
        progress: show a tqdm progress bar on stderr.
    """

    out: Path
    arms: list[Arm]
    max_new_tokens: int
    batch_size: int = 1
    seed: int = 0
    model: str = "unknown"
    overfit_tolerance: float = 0.05
    progress: bool = True


def run_evaluation(dataset: Dataset, runner: Runner, options: EvalOptions) -> dict[str, Any]:
    """Run every arm on every prompt of ``dataset``, resuming from ``options.out``; return the summary.

    Rows already in ``results.jsonl`` are kept and their pairs skipped. Pairs run batch by batch
    of prompts, every arm within a batch, so that an interrupted run has comparable results for
    all arms and a slowly changing machine load affects every arm alike.

    Raises:
        EvaluationError: the output folder contains a run with other settings, or a runner failed in
            a way that affects every prompt (for example an unreachable API).
    """
    scorer = Scorer(dataset)
    store = ResultStore(options.out, _run_settings(dataset, runner, options))
    pending = [(item, arm) for item in dataset.items for arm in options.arms if not store.has(item.item_id, arm.name)]
    total = len(dataset.items) * len(options.arms)
    logger.info("evaluation of %s: %d of %d pairs to run, results in %s", dataset.path, len(pending), total, store.folder)

    with tqdm(total=total, initial=total - len(pending), unit="pair", desc="slotq eval",
              disable=not options.progress) as progress:
        for batch in _batches(dataset.items, options.batch_size):
            for arm in options.arms:
                todo = [item for item in batch if not store.has(item.item_id, arm.name)]
                if todo:
                    _run_pairs(runner, scorer, store, arm, todo, progress)

    return write_outputs(dataset, scorer, store, runner, options)


def write_outputs(dataset: Dataset, scorer: Scorer, store: ResultStore, runner: Runner,
                  options: EvalOptions) -> dict[str, Any]:
    """Write summary.json, the plots and report.md from the stored rows; return the summary."""
    item_ids = [item.item_id for item in dataset.items]
    rows = store.rows()
    wanted = set(item_ids)
    rows_by_arm = {arm.name: [r for r in rows if r["arm"] == arm.name and r["item_id"] in wanted] for arm in options.arms}

    metrics = scorer.metrics
    summary = {
        "run": {"data": str(dataset.path), **_run_settings(dataset, runner, options), "prompts": len(item_ids),
                "device": runner.device, "written_at": datetime.now(timezone.utc).isoformat()},
        "task_metric": metrics[0].name,
        "format_metric": metrics[1].name,
        "metrics": [{"name": m.name, "label": m.label, "level": m.level} for m in metrics],
        "skipped_checks": scorer.skipped_checks,
        "arms": summarize(rows, options.arms, metrics, item_ids, seed=options.seed),
    }
    summary["plots"] = draw_plots(store.folder, summary["arms"], rows_by_arm,
                                  [(m.name, m.label) for m in metrics[:2]])

    (store.folder / SUMMARY_FILE).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (store.folder / REPORT_FILE).write_text(render_report(summary), encoding="utf-8")
    return summary


def _run_pairs(runner: Runner, scorer: Scorer, store: ResultStore, arm: Arm, items: list[EvalItem], progress) -> None:
    generations = runner.run(arm, items)
    references = {item.item_id: item.reference for item in items}
    for generation in generations:
        row = {
            "item_id": generation.item_id,
            "arm": arm.name,
            "steps": arm.steps,
            "lr": arm.lr,
            **{key: value for key, value in generation.to_dict().items() if key != "item_id"},
            "score": scorer.score(generation.text, references[generation.item_id]),
        }
        store.append(row)
        progress.update(1)


def _run_settings(dataset: Dataset, runner: Runner, options: EvalOptions) -> dict[str, Any]:
    """Return the settings that change outputs; a resumed run must match them."""
    return {
        "data_sha256": dataset.sha256,
        "kind": dataset.kind,
        "model": options.model,
        "mode": runner.mode,
        "max_new_tokens": options.max_new_tokens,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "overfit_tolerance": options.overfit_tolerance,
    }


def _batches(items: list[EvalItem], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
