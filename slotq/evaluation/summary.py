"""Per-arm aggregates of the stored rows, and each arm's paired comparison with steps = 0."""

from __future__ import annotations

from typing import Any

from slotq.evaluation.arms import BASELINE, Arm
from slotq.evaluation.scoring import Metric
from slotq.evaluation.statistics import describe, mcnemar_exact, paired_bootstrap_interval, wilson_interval

CONFIDENCE = 0.95


def summarize(rows: list[dict], arms: list[Arm], metrics: list[Metric], item_ids: list[str],
              seed: int = 0) -> list[dict[str, Any]]:
    """Return one summary dict per arm, over the rows of ``item_ids`` only, baseline first.

    Args:
        rows: stored result rows (any arms and items; others are ignored).
        arms: arms to report, the baseline among them.
        metrics: the data set's metrics; the first is the task metric, the second format compliance.
        item_ids: the prompts of this run.
        seed: seed of the bootstrap resampling.
    """
    if not arms or arms[0] != BASELINE:
        raise ValueError(f"the first arm must be the baseline {BASELINE.name}, not {arms[0].name if arms else None}")
    wanted = set(item_ids)
    by_arm: dict[str, dict[str, dict]] = {arm.name: {} for arm in arms}
    for row in rows:
        if row["arm"] in by_arm and row["item_id"] in wanted:
            by_arm[row["arm"]][row["item_id"]] = row

    baseline_rows = by_arm[BASELINE.name]
    summaries = []
    for arm in arms:
        arm_rows = by_arm[arm.name]
        summary = _arm_summary(arm, list(arm_rows.values()), metrics)
        if not arm.is_baseline:
            summary["vs_baseline"] = _comparison(arm_rows, baseline_rows, metrics, seed)
            summary["overhead"] = _overhead(summary, summaries[0])
        summaries.append(summary)
    return summaries


def _arm_summary(arm: Arm, rows: list[dict], metrics: list[Metric]) -> dict[str, Any]:
    succeeded = [row for row in rows if row.get("error") is None]
    return {
        "arm": arm.name,
        "steps": arm.steps,
        "lr": arm.lr,
        "prompts": len(rows),
        "errors": len(rows) - len(succeeded),
        "metrics": {metric.name: _proportion(_values(rows, metric)) for metric in metrics},
        "latency_ms": describe([row["latency_ms"] for row in succeeded if row.get("latency_ms") is not None]),
        "compute_ms_per_job": describe([row["compute_ms"] for row in succeeded if row.get("compute_ms") is not None])["mean"],
        "validation_ms": describe([row["validation_ms"] for row in succeeded if row.get("validation_ms") is not None]),
        "wall_ms": describe([row["wall_ms"] for row in rows if row.get("wall_ms") is not None]),
        "output_tokens": describe([row["output_tokens"] for row in succeeded if row.get("output_tokens") is not None]),
        "delta_norm": describe([row["delta_norm"] for row in succeeded if row.get("delta_norm") is not None]),
        "overfit": _overfit(succeeded),
    }


def _values(rows: list[dict], metric: Metric) -> list[bool]:
    """Return the metric's outcomes: one per prompt, or one per checked instruction, pooled."""
    if metric.level == "instruction":
        return [entry[metric.name] for row in rows for entry in row["score"].get("instructions", [])]
    return [row["score"][metric.name] for row in rows if row["score"].get(metric.name) is not None]


def _proportion(values: list[bool]) -> dict[str, Any]:
    if not values:
        return {"successes": 0, "total": 0, "rate": None, "low": None, "high": None}
    successes = sum(bool(value) for value in values)
    low, high = wilson_interval(successes, len(values), CONFIDENCE)
    return {"successes": successes, "total": len(values), "rate": successes / len(values), "low": low, "high": high}


def _overfit(rows: list[dict]) -> dict[str, Any] | None:
    """Return the share of flagged deltas, or None when no row was checked (steps = 0, service mode)."""
    flags = [row["overfit"] for row in rows if row.get("overfit") is not None]
    if not flags:
        return None
    summary = _proportion(flags)
    summary["validation_loss_change"] = describe(
        [row["validation_loss_change"] for row in rows if row.get("validation_loss_change") is not None]
    )
    return summary


def _comparison(arm_rows: dict[str, dict], baseline_rows: dict[str, dict], metrics: list[Metric],
                seed: int) -> dict[str, Any]:
    """Return, per metric, the paired difference arm - baseline with its interval and McNemar p-value."""
    shared = [item_id for item_id in arm_rows if item_id in baseline_rows]
    comparison = {}
    for metric in metrics:
        pairs = _pairs([arm_rows[i] for i in shared], [baseline_rows[i] for i in shared], metric)
        comparison[metric.name] = _paired_difference(pairs, seed)
    return comparison


def _pairs(arm_rows: list[dict], baseline_rows: list[dict], metric: Metric) -> list[tuple[bool, bool]]:
    pairs = []
    for arm_row, baseline_row in zip(arm_rows, baseline_rows):
        if metric.level == "instruction":
            arm_entries = arm_row["score"].get("instructions", [])
            baseline_entries = baseline_row["score"].get("instructions", [])
            pairs.extend((a[metric.name], b[metric.name]) for a, b in zip(arm_entries, baseline_entries))
            continue
        arm_value, baseline_value = arm_row["score"].get(metric.name), baseline_row["score"].get(metric.name)
        if arm_value is not None and baseline_value is not None:
            pairs.append((arm_value, baseline_value))
    return pairs


def _paired_difference(pairs: list[tuple[bool, bool]], seed: int) -> dict[str, Any]:
    if not pairs:
        return {"pairs": 0, "difference": None, "low": None, "high": None, "gained": 0, "lost": 0, "p_value": None}
    differences = [float(arm) - float(baseline) for arm, baseline in pairs]
    gained = sum(1 for arm, baseline in pairs if arm and not baseline)
    lost = sum(1 for arm, baseline in pairs if baseline and not arm)
    low, high = paired_bootstrap_interval(differences, CONFIDENCE, seed=seed)
    return {
        "pairs": len(pairs),
        "difference": sum(differences) / len(differences),
        "low": low,
        "high": high,
        "gained": gained,
        "lost": lost,
        "p_value": mcnemar_exact(gained, lost),
    }


def _overhead(arm: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """Return extra latency and worker time over the baseline.

    ``extra_compute_s_per_1000_jobs`` is the difference of mean worker ms per job: ms per job
    times 1,000 jobs / 1,000 ms per s.
    """
    arm_median, base_median = arm["latency_ms"]["median"], baseline["latency_ms"]["median"]
    arm_compute, base_compute = arm["compute_ms_per_job"], baseline["compute_ms_per_job"]
    if None in (arm_median, base_median, arm_compute, base_compute):
        return {"median_latency_ms": None, "median_latency_ratio": None, "extra_compute_s_per_1000_jobs": None,
                "compute_ratio": None}
    return {
        "median_latency_ms": arm_median - base_median,
        "median_latency_ratio": arm_median / base_median if base_median else None,
        "extra_compute_s_per_1000_jobs": arm_compute - base_compute,
        "compute_ratio": arm_compute / base_compute if base_compute else None,
    }
