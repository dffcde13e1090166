"""The Markdown report: the headline paragraph, per-arm tables and the plots."""

from __future__ import annotations

from typing import Any


def render_report(summary: dict[str, Any]) -> str:
    """Return ``report.md`` for a ``summary.json`` document."""
    run = summary["run"]
    arms = summary["arms"]
    labels = {metric["name"]: metric["label"] for metric in summary["metrics"]}
    task, fmt = summary["task_metric"], summary["format_metric"]

    lines = [
        f"# SLOT evaluation: {run['kind']} ({run['prompts']} prompts)",
        "",
        _headline(arms, labels[task], task),
        "",
        f"Data: `{run['data']}` (sha256 `{run['data_sha256'][:12]}`). Model: {run['model']}. "
        f"Mode: {run['mode']} on {run['device']}. max_new_tokens={run['max_new_tokens']}, greedy decoding, "
        f"batch size {run['batch_size']}, seed {run['seed']}.",
        "",
        "## Arms",
        "",
        "| arm | prompts | errors | " + " | ".join(labels[m["name"]] for m in summary["metrics"])
        + " | median latency | p90 latency | worker s / 1,000 jobs | median δ norm | over-fit rate |",
        "|---|---|---|" + "---|" * len(summary["metrics"]) + "---|---|---|---|---|",
    ]
    for arm in arms:
        lines.append(_arm_line(arm, summary["metrics"]))

    lines += ["", "## Paired difference against steps=0", "",
              "Difference of rates on the same prompts, with a 95% paired bootstrap interval and the "
              "exact McNemar p-value. Gained: prompts (or instructions) only the arm gets right; lost: "
              "only steps=0 gets right.", "",
              "| arm | metric | difference | 95% interval | gained | lost | p-value | extra latency (median) |",
              "|---|---|---|---|---|---|---|---|"]
    for arm in arms[1:]:
        for name in (task, fmt):
            lines.append(_comparison_line(arm, name, labels[name]))

    lines += _skipped_section(summary.get("skipped_checks") or {})
    lines += _notes(run)
    lines += ["", "## Plots", ""]
    for key, title in (("metrics", "Metrics per arm with 95% intervals"), ("latency", "Latency per prompt"),
                       ("delta_norms", "δ norms"), ("loss_traces", "Prompt loss during optimisation")):
        lines += [f"### {title}", "", f"![{title}]({summary['plots'][key]})", ""]
    return "\n".join(lines) + "\n"


def _headline(arms: list[dict], task_label: str, task: str) -> str:
    """Return the paragraph a manager reads: extra worker time per 1,000 jobs and what it buys."""
    if len(arms) < 2:
        return "Only the steps=0 arm ran, so there is nothing to compare."
    baseline_ms = arms[0]["compute_ms_per_job"]
    sentences = []
    if baseline_ms is not None:
        sentences.append(f"Plain decoding (steps=0) takes {baseline_ms / 1000:.2f} s of worker time per job "
                         f"({baseline_ms:.0f} s per 1,000 jobs).")
    for arm in arms[1:]:
        overhead = arm["overhead"]
        comparison = arm["vs_baseline"][task]
        if overhead["extra_compute_s_per_1000_jobs"] is None or comparison["difference"] is None:
            sentences.append(f"{arm['arm']}: not enough results to compare.")
            continue
        sentences.append(
            f"{arm['arm']} costs {overhead['extra_compute_s_per_1000_jobs']:+.0f} s of worker time per 1,000 jobs "
            f"({_percent_change(overhead['compute_ratio'])}) and changes the {task_label} by "
            f"{comparison['difference'] * 100:+.1f} points (95% interval {comparison['low'] * 100:+.1f} to "
            f"{comparison['high'] * 100:+.1f}; {comparison['gained']} prompts gained, {comparison['lost']} lost, "
            f"McNemar p = {comparison['p_value']:.2g})."
        )
    return " ".join(sentences)


def _arm_line(arm: dict, metrics: list[dict]) -> str:
    cells = [arm["arm"], str(arm["prompts"]), str(arm["errors"])]
    cells += [_rate(arm["metrics"][metric["name"]]) for metric in metrics]
    cells += [_seconds(arm["latency_ms"]["median"]), _seconds(arm["latency_ms"]["p90"]),
              _number(arm["compute_ms_per_job"], "{:.0f}"), _number(arm["delta_norm"]["median"], "{:.3g}"),
              _rate(arm["overfit"]) if arm["overfit"] else "not checked"]
    return "| " + " | ".join(cells) + " |"


def _comparison_line(arm: dict, name: str, label: str) -> str:
    comparison = arm["vs_baseline"][name]
    if comparison["difference"] is None:
        return f"| {arm['arm']} | {label} | no pairs | | | | | |"
    return (f"| {arm['arm']} | {label} | {comparison['difference'] * 100:+.1f} pts | "
            f"{comparison['low'] * 100:+.1f} to {comparison['high'] * 100:+.1f} | {comparison['gained']} | "
            f"{comparison['lost']} | {comparison['p_value']:.3g} | "
            f"{_number(arm['overhead']['median_latency_ms'], '{:+.0f} ms')} |")


def _skipped_section(skipped: dict[str, str]) -> list[str]:
    if not skipped:
        return []
    lines = ["", "## IFEval checks skipped", "",
             "These instructions were not checked in any arm; prompt-level metrics use the remaining "
             "instructions of each prompt.", ""]
    lines += [f"- `{instruction_id}`: {reason}" for instruction_id, reason in sorted(skipped.items())]
    return lines


def _notes(run: dict) -> list[str]:
    notes = ["", "## How to read this", "",
             "- Latency is the engine's wall-clock time for prefill, δ optimisation and decoding of the "
             "batch that held the prompt; worker time per job divides it by the batch size. Neither "
             "includes the over-fit check, whose time is in summary.json as validation_ms.",
             "- Rates carry 95% Wilson intervals; instruction-level rates pool all checked instructions, "
             "so their intervals ignore that instructions of one prompt are correlated."]
    if run["mode"] == "engine":
        notes.append("- The over-fit rate is the share of fitted deltas that raised the mean loss of the "
                     f"validation prompts by more than {run['overfit_tolerance']:.0%}; steps=0 has no delta to check.")
    else:
        notes.append("- The over-fit rate is measured in engine mode only; through the service it shows "
                     "only when the job result reports it.")
    return notes


def _rate(proportion: dict | None) -> str:
    if not proportion or proportion["rate"] is None:
        return "n/a"
    return (f"{proportion['rate'] * 100:.1f}% ({proportion['low'] * 100:.1f}–{proportion['high'] * 100:.1f}), "
            f"{proportion['successes']}/{proportion['total']}")


def _seconds(milliseconds: float | None) -> str:
    return "n/a" if milliseconds is None else f"{milliseconds / 1000:.2f} s"


def _number(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _percent_change(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{(ratio - 1) * 100:+.0f}% over steps=0"
