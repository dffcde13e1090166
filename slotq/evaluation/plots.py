"""PNG plots of an evaluation, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

#: Small figures at a low resolution keep the PNGs a few tens of KB, small enough to commit.
FIGURE_SIZE = (6.0, 3.6)
DPI = 80

PLOT_FILES = {
    "metrics": "metrics.png",
    "latency": "latency.png",
    "delta_norms": "delta_norms.png",
    "loss_traces": "loss_traces.png",
}


def draw_plots(folder: Path, summaries: list[dict[str, Any]], rows_by_arm: dict[str, list[dict]],
               metric_names: list[tuple[str, str]]) -> dict[str, str]:
    """Draw every plot into ``folder`` and return plot key -> file name.

    Args:
        summaries: per-arm summaries, baseline first.
        rows_by_arm: arm name -> that arm's rows of this run.
        metric_names: (metric key, label) pairs to draw, the task metric first.
    """
    arm_names = [summary["arm"] for summary in summaries]
    _draw_metrics(folder / PLOT_FILES["metrics"], summaries, metric_names)
    _draw_latency(folder / PLOT_FILES["latency"], arm_names, rows_by_arm)
    _draw_delta_norms(folder / PLOT_FILES["delta_norms"], arm_names, rows_by_arm)
    _draw_loss_traces(folder / PLOT_FILES["loss_traces"], arm_names, rows_by_arm)
    return dict(PLOT_FILES)


def _draw_metrics(path: Path, summaries: list[dict], metric_names: list[tuple[str, str]]) -> None:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    width = 0.8 / max(len(metric_names), 1)
    for index, (name, label) in enumerate(metric_names):
        positions, rates, errors = [], [], [[], []]
        for arm_index, summary in enumerate(summaries):
            metric = summary["metrics"][name]
            if metric["rate"] is None:
                continue
            positions.append(arm_index + (index - (len(metric_names) - 1) / 2) * width)
            rates.append(metric["rate"])
            errors[0].append(metric["rate"] - metric["low"])
            errors[1].append(metric["high"] - metric["rate"])
        axes.bar(positions, rates, width=width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(range(len(summaries)), [summary["arm"] for summary in summaries], fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("rate (95% Wilson interval)")
    axes.legend(fontsize=7)
    _save(figure, path)


def _draw_latency(path: Path, arm_names: list[str], rows_by_arm: dict[str, list[dict]]) -> None:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    data = [[row["latency_ms"] / 1000 for row in rows_by_arm.get(name, []) if row.get("latency_ms") is not None]
            for name in arm_names]
    shown = [(name, values) for name, values in zip(arm_names, data) if values]
    if shown:
        axes.boxplot([values for _, values in shown], tick_labels=[name for name, _ in shown])
    axes.set_ylabel("latency per prompt (s)")
    axes.tick_params(axis="x", labelsize=8)
    _save(figure, path)


def _draw_delta_norms(path: Path, arm_names: list[str], rows_by_arm: dict[str, list[dict]]) -> None:
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    for name in arm_names:
        norms = [row["delta_norm"] for row in rows_by_arm.get(name, []) if row.get("delta_norm") is not None]
        if norms and any(norm > 0 for norm in norms):
            axes.hist(norms, bins=20, alpha=0.6, label=name)
    axes.set_xlabel("L2 norm of delta")
    axes.set_ylabel("prompts")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    _save(figure, path)


def _draw_loss_traces(path: Path, arm_names: list[str], rows_by_arm: dict[str, list[dict]]) -> None:
    """Plot each prompt's loss relative to its loss at delta = 0, thin per prompt and thick median."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(arm_names):
        traces = [row["loss_trace"] for row in rows_by_arm.get(name, []) if len(row.get("loss_trace") or []) > 1]
        if not traces:
            continue
        colour = colours[index % len(colours)]
        relative = [[value / trace[0] for value in trace] for trace in traces if trace[0]]
        for trace in relative[:50]:
            axes.plot(range(len(trace)), trace, color=colour, alpha=0.15, linewidth=0.8)
        length = min(len(trace) for trace in relative)
        median = [sorted(trace[step] for trace in relative)[len(relative) // 2] for step in range(length)]
        axes.plot(range(length), median, color=colour, linewidth=2, label=f"{name} (median)")
    axes.set_xlabel("optimisation step")
    axes.set_ylabel("prompt loss / loss at step 0")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    _save(figure, path)


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
