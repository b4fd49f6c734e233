"""Plots of a run's report: arrays in, a PNG file out.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas rather than ``pyplot``,
so no global backend is switched and no figure is left open in a caller's session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from minbert.eval.report.read import bucket_errors

DPI = 120


def _floats(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)


def plot_curves(
    records: list[dict],
    losses: list[str],
    metrics: dict[str, str],
    path: Path,
    best_epoch: int | None = None,
) -> None:
    """Train loss per objective (``losses``: tasks, MLM, SimCSE) and the dev ``metrics``
    (key -> legend label) by epoch.

    ``overall_leaderboard`` is drawn as the dashed black summary line. Perplexities get a
    log-scale panel of their own: in the thousands early in pre-training, they would flatten
    every accuracy and correlation on a shared axis.
    """
    bounded = {k: v for k, v in metrics.items() if not k.endswith("_perplexity")}
    unbounded = {k: v for k, v in metrics.items() if k.endswith("_perplexity")}
    panels = 3 if unbounded else 2
    fig = Figure(figsize=(5.5 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels)
    loss_ax, dev_ax = axes[0], axes[1]
    epochs = [r["epoch"] for r in records]

    def series(field: str, key: str) -> list[float]:
        return [r.get(field, {}).get(key, np.nan) for r in records]

    for name in losses:
        loss_ax.plot(epochs, series("train_loss", name), marker="o", label=name)
    for key, label in bounded.items():
        if key == "overall_leaderboard":
            style = {"marker": "s", "color": "black", "linestyle": "--"}
        else:
            style = {"marker": "o"}
        dev_ax.plot(epochs, series("dev", key), label=label, **style)
    ylabel = "accuracy / Pearson r" + (
        " / Spearman rho" if any("spearman" in k for k in bounded) else ""
    )
    titled = [
        (loss_ax, "training loss (mean over the epoch)", "loss"),
        (dev_ax, "dev metric after each epoch", ylabel),
    ]
    if unbounded:
        ppl_ax = axes[2]
        for key, label in unbounded.items():
            ppl_ax.plot(epochs, series("dev", key), marker="o", color="tab:red", label=label)
        ppl_ax.set_yscale("log")
        # plain tick labels: the default mathtext ones look up fonts a slim install lacks
        ppl_ax.yaxis.set_major_formatter(LogFormatter())
        ppl_ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        titled.append((ppl_ax, "dev perplexity after each epoch (lower is better)", "perplexity"))
    for ax, title, ylabel in titled:
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label="best epoch")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)  # only epochs that exist, not 0 or fractions
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # a single point: give it room instead of a degenerate axis
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
            ax.legend(fontsize="small")
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, labels: list[str], title: str, path: Path) -> None:
    """Counts in every cell, darker for more; rows are gold, columns predicted."""
    n = len(labels)
    side = max(5.0, 1.0 * n + 2.5)
    fig = Figure(figsize=(side * 1.15, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            color = "white" if value > threshold else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=10)
    ax.set_xticks(range(n), labels, rotation=30 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.suptitle(title)  # over the whole figure: a long title must not run under the colorbar
    _save(fig, path)


def plot_scatter(
    gold: np.ndarray,
    pred: np.ndarray,
    edges: np.ndarray,
    title: str,
    path: Path,
) -> None:
    """Predicted vs gold with the y = x line, and the mean absolute error per gold bucket."""
    mae, counts = bucket_errors(gold, pred, edges)
    low, high = float(edges[0]), float(edges[-1])
    pad = 0.03 * (high - low)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    scatter_ax, bar_ax = fig.subplots(1, 2)
    scatter_ax.scatter(gold, pred, s=14, alpha=0.5, edgecolors="none")
    scatter_ax.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    scatter_ax.set_xlim(low - pad, high + pad)
    scatter_ax.set_ylim(low - pad, high + pad)
    scatter_ax.set_aspect("equal")
    scatter_ax.set_xlabel("gold")
    scatter_ax.set_ylabel("predicted")
    scatter_ax.set_title(title)
    scatter_ax.grid(alpha=0.3)
    scatter_ax.legend(loc="upper left", fontsize="small")
    names = [
        f"[{a:g}, {b:g}{']' if i == len(edges) - 2 else ')'}"
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    ]
    heights = np.nan_to_num(mae)
    bars = bar_ax.bar(names, heights, color="tab:orange")
    for bar, count, value in zip(bars, counts, mae, strict=True):
        label = f"n={count}" if count else "n=0"
        top = 0.0 if np.isnan(value) else value
        bar_ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, top),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize="small",
        )
    bar_ax.set_ylim(0, max(1e-9, float(heights.max())) * 1.18 if len(heights) else 1)
    bar_ax.set_xlabel("gold bucket")
    bar_ax.set_ylabel("mean |predicted - gold|")
    bar_ax.set_title("mean absolute error per gold bucket")
    bar_ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_conflicts(log: dict, path: Path) -> None:
    """Cosine between task gradients per task pair, and each task's gradient norm over the
    mean of the tasks' norms, by step (``joined_step_log(records, "conflicts")``)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    cos_ax, ratio_ax = fig.subplots(1, 2)
    steps = np.asarray(log["step"])
    marker = "o" if len(steps) <= 60 else None
    for pair, values in log.get("cosine", {}).items():
        cos_ax.plot(steps, _floats(values), marker=marker, markersize=3, label=pair)
    for task, values in log.get("norm_ratio", {}).items():
        ratio_ax.plot(steps, _floats(values), marker=marker, markersize=3, label=task)
    cos_ax.axhline(0.0, color="black", linewidth=1)
    ratio_ax.axhline(1.0, color="black", linewidth=1)
    for ax, title, ylabel in (
        (cos_ax, "gradient cosine on the shared encoder (< 0: conflict)", "cosine"),
        (ratio_ax, "gradient norm / mean norm of the tasks", "ratio"),
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)


def plot_task_weights(log: dict, path: Path) -> None:
    """The weight a learned-weight strategy gave each task, by step."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    steps = np.asarray(log["step"])
    for task, values in log.items():
        if task != "step":
            weights = _floats(values)
            present = ~np.isnan(weights)  # round_robin steps hold one task: join its points
            ax.plot(steps[present], weights[present], label=task)
    ax.set_title("task weights by step")
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_expert_usage(usage: dict[str, list[float]], epoch: int, path: Path) -> None:
    """Each task's share of the routed experts' assignments in one epoch, as grouped bars."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    tasks = list(usage)
    experts = len(next(iter(usage.values())))
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        ax.bar(np.arange(experts) + i * width, usage[task], width, label=task)
    ax.axhline(1 / experts, color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(np.arange(experts) + width * (len(tasks) - 1) / 2)
    ax.set_xticklabels([f"expert {e}" for e in range(experts)])
    ax.set_title(f"expert usage by task, epoch {epoch} (share of token assignments)")
    ax.set_ylabel("share")
    ax.legend(fontsize="small")
    _save(fig, path)
