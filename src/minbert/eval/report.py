"""A run's report: tables, training curves, confusion matrices, score scatters, worst errors.

``write_report(run_dir)`` reads only what a run leaves in its folder (``config.toml``,
``metrics.jsonl``, ``final.json``, ``predictions/``) plus the dev files its config names, so a
report can be rebuilt at any time without the model, and on a machine without a GPU.

Everything task-specific comes from the task registry (``label_kind``, ``num_classes``,
``score_range``, ``metric``): a new task gets a report without touching this file. The only
per-task entries here are optional display names for class labels.

The numeric work is done by small pure helpers (``confusion_matrix``, ``bucket_errors``,
``worst_errors``) that are tested on their own; the plotting functions take arrays and a path.
Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas rather than ``pyplot``,
so no global backend is switched and no figure is left open in a caller's session.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minbert.config import Config, load_config
from minbert.data.io import TaskData, read_task_file
from minbert.data.tasks import TASKS, TaskSpec
from minbert.eval.metrics import accuracy, pearson

log = logging.getLogger(__name__)

# Display names of class labels, keyed by task; tasks not listed show the numbers.
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "sst": ("very negative", "negative", "neutral", "positive", "very positive"),
    "cfimdb": ("negative", "positive"),
    "quora": ("not duplicate", "duplicate"),
}
# Known overlaps between a packaged model's pre-training data and a task, keyed by model name
# then task: a score on such a task is not a clean held-out measure, and the report says so.
PRETRAINING_OVERLAP: dict[str, dict[str, str]] = {
    "minilm-l6": {
        "quora": "all-MiniLM-L6-v2 was pre-trained on sentence pairs that include Quora "
        "duplicate questions, so its Quora score is not a clean held-out measure."
    },
}
WORST_K = 10  # rows per task in the worst-errors tables
TEXT_CHARS = 150  # texts in tables are cut to this many characters
DPI = 120


class ReportError(ValueError):
    """A run folder whose files cannot be turned into a report (missing, or inconsistent)."""


# ---------------------------------------------------------------------------------------------
# Pure helpers.


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Counts of (gold, predicted) pairs: rows are gold classes, columns predicted ones."""
    gold = np.asarray(gold).astype(np.int64)
    pred = np.asarray(pred).astype(np.int64)
    if gold.shape != pred.shape or gold.ndim != 1:
        raise ValueError(
            f"confusion_matrix needs two equal 1-d shapes: {gold.shape} vs {pred.shape}"
        )
    for name, values in (("gold", gold), ("pred", pred)):
        if len(values) and (values.min() < 0 or values.max() >= n):
            raise ValueError(f"confusion_matrix: {name} has a class outside 0..{n - 1}")
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (gold, pred), 1)
    return matrix


def bucket_errors(
    gold: np.ndarray, pred: np.ndarray, edges: np.ndarray | list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute error and row count per gold bucket ``[e_i, e_i+1)``, the last one closed.

    Shows where on the score scale a regressor is off (often at the extremes, which a model
    trained with MSE pulls toward the mean). Empty buckets have a nan error; gold values
    outside the edges are not counted.
    """
    gold = np.asarray(gold, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if gold.shape != pred.shape:
        raise ValueError(f"bucket_errors needs equal shapes: {gold.shape} vs {pred.shape}")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bucket_errors needs at least 2 increasing edges, got {edges}")
    buckets = len(edges) - 1
    index = np.searchsorted(edges, gold, side="right") - 1
    index[gold == edges[-1]] = buckets - 1  # the last bucket includes its upper edge
    inside = (index >= 0) & (index < buckets)
    counts = np.bincount(index[inside], minlength=buckets)
    sums = np.bincount(index[inside], weights=np.abs(pred - gold)[inside], minlength=buckets)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return mae, counts


def score_edges(spec: TaskSpec) -> np.ndarray:
    """Bucket edges over a score task's range: unit steps where the range is a few whole units
    (STS 0-5 -> [0,1), ..., [4,5]), else five equal buckets."""
    low, high = spec.score_range
    width = high - low
    steps = int(width) if float(width).is_integer() and 2 <= width <= 10 else 5
    return np.linspace(low, high, steps + 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)  # no overflow for large logits
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Written with tanh so that large negative logits do not overflow ``exp``."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


@dataclass(frozen=True)
class RankedErrors:
    """The worst rows of one task, worst first, and what the ranking value means."""

    rows: np.ndarray  # indices into the dev rows
    values: np.ndarray  # the ranking value of each row in ``rows``
    measure: str  # column header for ``values``
    how: str  # one sentence on how the rows were ranked, for the report


def worst_errors(
    label_kind: str,
    gold: np.ndarray,
    pred: np.ndarray,
    outputs: np.ndarray | None = None,
    k: int = WORST_K,
) -> RankedErrors:
    """The ``k`` dev rows most worth reading, by the task's kind of label.

    class: wrong rows by the softmax probability the model gave its wrong class (confident
    mistakes first: label noise or a real blind spot); binary: wrong rows by the sigmoid
    confidence on the wrong side; score: every row by ``|pred - gold|``. Without ``outputs``,
    class and binary rows are ranked by ``|pred - gold|``. Ties keep file order.
    """
    gold = np.asarray(gold, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gold.shape != pred.shape or gold.ndim != 1:
        raise ValueError(f"worst_errors needs two equal 1-d shapes: {gold.shape} vs {pred.shape}")
    distance = np.abs(pred - gold)
    if label_kind == "score":
        candidates = np.arange(len(gold))
        value, measure, how = distance, "abs error", "all rows, largest |predicted - gold| first"
    elif label_kind in ("class", "binary"):
        candidates = np.flatnonzero(pred != gold)
        if outputs is None:
            value, measure = distance, "abs(pred - gold)"
            how = "wrong rows, largest |predicted - gold| first, then file order (no raw outputs)"
        elif label_kind == "class":
            probs = softmax(outputs)
            if probs.shape[0] != len(gold) or probs.ndim != 2:
                raise ValueError(f"class outputs must be (N, classes), got {probs.shape}")
            value = probs[np.arange(len(gold)), pred.astype(np.int64)]
            measure = "p(predicted)"
            how = "wrong rows, highest softmax probability of the wrong predicted class first"
        else:
            logits = np.asarray(outputs, dtype=np.float64).reshape(-1)
            if logits.shape != gold.shape:
                raise ValueError(f"binary outputs must be (N,), got {np.shape(outputs)}")
            p_one = sigmoid(logits)
            value = np.where(pred == 1, p_one, 1.0 - p_one)
            measure = "p(predicted)"
            how = "wrong rows, highest sigmoid confidence on the wrong side first"
    else:
        raise ValueError(f"unknown label kind {label_kind!r}")
    order = np.argsort(-value[candidates], kind="stable")
    rows = candidates[order][:k]
    return RankedErrors(rows=rows, values=value[rows], measure=measure, how=how)


# ---------------------------------------------------------------------------------------------
# Reading the run folder.


def read_metrics(path: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``; a bad line is an error naming file:line."""
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}:{line_no}: not a JSON record ({exc})") from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise ReportError(f"{path}:{line_no}: expected an object with an 'epoch' key")
        records.append(record)
    return records


def read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    """``id,prediction`` rows of a prediction file, as written by ``write_predictions``."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["id", "prediction"]:
        raise ReportError(f"{path}: expected the header 'id,prediction'")
    ids, values = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        try:
            row_id, value = row
            values.append(float(value))
        except ValueError:
            raise ReportError(f"{path}:{line_no}: expected 'id,number', got {row}") from None
        ids.append(row_id)
    return ids, np.asarray(values, dtype=np.float64)


def check_ids(pred_path: Path, pred_ids: list[str], dev: TaskData) -> None:
    """Predictions must be the dev rows in dev-file order, else every comparison is wrong."""
    if pred_ids == dev.ids:
        return
    where = next(
        (i for i, (a, b) in enumerate(zip(pred_ids, dev.ids, strict=False)) if a != b),
        min(len(pred_ids), len(dev.ids)),
    )
    got = pred_ids[where] if where < len(pred_ids) else "(end of file)"
    want = dev.ids[where] if where < len(dev.ids) else "(end of file)"
    raise ReportError(
        f"{pred_path}: ids do not match the dev file {dev.path} "
        f"({len(pred_ids)} vs {len(dev.ids)} rows; first difference at row {where + 1}: "
        f"{got!r} vs {want!r}). Was the run made with other data or another data.dev_limit?"
    )


def load_outputs(path: Path, spec: TaskSpec, n: int) -> tuple[np.ndarray | None, str]:
    """Raw head outputs if saved and of the expected shape; else None and the reason."""
    if not path.is_file():
        return None, f"{path.name} not found"
    try:
        outputs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable ({exc})"
    want = (n, spec.num_classes) if spec.label_kind == "class" else (n,)
    if spec.label_kind != "class" and outputs.shape == (n, 1):
        outputs = outputs.reshape(n)
    if outputs.shape != want:
        return None, f"{path.name} has shape {outputs.shape}, expected {want}"
    return outputs, ""


def num_labels(spec: TaskSpec) -> int:
    return spec.num_classes if spec.label_kind == "class" else 2


def label_names(task: str, n: int) -> list[str]:
    """Axis labels for ``n`` classes: ``0 very negative``, ..., or just the numbers."""
    names = LABEL_NAMES.get(task)
    if names is None or len(names) != n:
        return [str(i) for i in range(n)]
    return [f"{i} {name}" for i, name in enumerate(names)]


def label_text(task: str, value: float, kind: str) -> str:
    """A gold or predicted value as a table cell: ``3 (positive)``, or ``2.40`` for scores."""
    if kind == "score":
        return f"{value:.2f}"
    index = int(value)
    names = LABEL_NAMES.get(task)
    return f"{index} ({names[index]})" if names and 0 <= index < len(names) else str(index)


def joined_step_log(records: list[dict], key: str) -> dict:
    """The per-step columns of ``key`` (``conflicts`` or ``task_weights``, see
    ``minbert.train.conflicts.epoch_fields``) joined over the epochs: lists are concatenated,
    per-epoch summaries (single numbers) are left out."""
    joined: dict = {}
    for record in records:
        for name, column in record.get(key, {}).items():
            if isinstance(column, list):
                joined.setdefault(name, []).extend(column)
            elif isinstance(column, dict) and all(isinstance(v, list) for v in column.values()):
                for sub, values in column.items():
                    joined.setdefault(name, {}).setdefault(sub, []).extend(values)
    return joined


def _floats(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Plots: arrays in, a PNG file out.


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)


def plot_curves(
    records: list[dict], tasks: list[str], path: Path, best_epoch: int | None = None
) -> None:
    """Train loss per task and dev metric per task (plus the leaderboard overall) by epoch."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, dev_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in records]
    for task in tasks:
        losses = [r.get("train_loss", {}).get(task, np.nan) for r in records]
        loss_ax.plot(epochs, losses, marker="o", label=task)
        key = f"{task}_{TASKS[task].metric}"
        dev = [r.get("dev", {}).get(key, np.nan) for r in records]
        dev_ax.plot(epochs, dev, marker="o", label=f"{task} {TASKS[task].metric}")
    board = [r.get("dev", {}).get("overall_leaderboard", np.nan) for r in records]
    dev_ax.plot(
        epochs, board, marker="s", color="black", linestyle="--", label="overall (leaderboard)"
    )
    for ax, title, ylabel in (
        (loss_ax, "training loss (mean over the epoch)", "loss"),
        (dev_ax, "dev metric after each epoch", "accuracy / Pearson r"),
    ):
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


# ---------------------------------------------------------------------------------------------
# Markdown.


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str, limit: int = TEXT_CHARS) -> str:
    """One table cell: one line, pipes escaped, cut to ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("|", "\\|")


def _num(value: object, digits: int = 4) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "–"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"
    return f"{seconds:.1f} s ({parts})"


def _metric_label(key: str) -> str:
    return {
        "overall_mean": "overall (mean)",
        "overall_leaderboard": "overall (leaderboard)",
    }.get(key, key.replace("_", " "))


def _overall_note(tasks: list[str]) -> str:
    pearson_tasks = [t for t in tasks if TASKS[t].metric == "pearson"]
    plain = "**overall (mean)** is the plain mean of the task metrics above"
    if pearson_tasks:
        named = ", ".join(pearson_tasks)
        return (
            f"{plain}; **overall (leaderboard)** is the CS224N leaderboard form, which maps the "
            f"STS-style Pearson r ({named}) to (r + 1) / 2 before averaging, so every term "
            "lies in [0, 1]. The best epoch is chosen by overall (leaderboard)."
        )
    return (
        f"{plain}; **overall (leaderboard)** is the CS224N leaderboard form, which maps STS "
        "Pearson r to (r + 1) / 2 before averaging. No Pearson task was trained here, so the two "
        "forms agree. The best epoch is chosen by overall (leaderboard)."
    )


def _epoch_tables(records: list[dict], tasks: list[str]) -> list[str]:
    metric_keys = [f"{t}_{TASKS[t].metric}" for t in tasks]
    header = (
        ["epoch"]
        + [f"{t} loss" for t in tasks]
        + [f"{t} {TASKS[t].metric}" for t in tasks]
        + ["overall (mean)", "overall (leaderboard)", "train s"]
    )
    rows = []
    for r in records:
        losses, dev = r.get("train_loss", {}), r.get("dev", {})
        rows.append(
            [str(r["epoch"])]
            + [_num(losses.get(t)) for t in tasks]
            + [_num(dev.get(k)) for k in metric_keys]
            + [_num(dev.get("overall_mean")), _num(dev.get("overall_leaderboard"))]
            + [_num(r.get("train_seconds"), 1)]
        )
    seen_rows = []
    for r in records:
        seen, planned = r.get("examples", {}), r.get("planned_examples", {})
        cells = [str(r["epoch"])]
        for t in tasks:
            count = seen.get(t)
            cell = "–" if count is None else f"{count:,}"
            if count is not None and planned.get(t) not in (None, count):
                cell += f" of {planned[t]:,} planned"
            cells.append(cell)
        seen_rows.append(cells)
    return [
        "## Metrics per epoch",
        "",
        "Train loss is the mean over the epoch's batches; dev metrics are measured after the epoch.",
        "",
        _md_table(header, rows),
        "",
        "## Training examples seen per epoch",
        "",
        _md_table(["epoch", *tasks], seen_rows),
        "",
    ]


def _calibration_table(records: list[dict]) -> list[str]:
    logged = [r for r in records if "calibration" in r]
    tasks = list(logged[0]["calibration"])
    rows = []
    for r in logged:
        for t in tasks:
            c = r["calibration"].get(t, {})
            rows.append(
                [str(r["epoch"]), t, str(c.get("heldout_rows", "–")), _num(c.get("threshold"))]
                + [_num(c.get("heldout_accuracy_at_0")), _num(c.get("heldout_accuracy"))]
            )
    return [
        "## Decision thresholds",
        "",
        "Calibrated binary tasks predict 1 when the logit is above a threshold chosen after "
        "each epoch on training rows held out from training (`heads.<task>.calibrate`); the "
        "dev metrics above use it.",
        "",
        _md_table(
            ["epoch", "task", "held-out rows", "threshold", "held-out acc at 0", "held-out acc"],
            rows,
        ),
        "",
    ]


def _conflict_table(records: list[dict]) -> list[str]:
    logged = [r for r in records if "conflicts" in r]
    pairs = list(logged[0]["conflicts"].get("conflict_rate", {}))
    tasks = list(logged[0]["conflicts"].get("mean_norm_ratio", {}))
    rows = []
    for r in logged:
        c = r["conflicts"]
        rows.append(
            [str(r["epoch"]), str(len(c.get("step", [])))]
            + [
                f"{_num(c['conflict_rate'].get(p), 2)} ({_num(c['mean_cosine'].get(p), 3)})"
                for p in pairs
            ]
            + [_num(c["mean_norm_ratio"].get(t), 2) for t in tasks]
        )
    return [
        "## Gradient conflicts",
        "",
        "Per task pair: the fraction of logged steps whose task gradients on the shared "
        "encoder have a negative cosine, and (in brackets) the mean cosine; per task: its "
        "gradient norm over the mean norm of the tasks, averaged over the logged steps.",
        "",
        _md_table(["epoch", "logged steps", *pairs, *[f"{t} norm ratio" for t in tasks]], rows),
        "",
    ]


def _errors_section(
    task: str, spec: TaskSpec, dev: TaskData, pred: np.ndarray, ranked: RankedErrors
) -> str:
    header = ["#", "id", *spec.text_columns, "gold", "predicted", ranked.measure]
    rows = []
    for rank, (row, value) in enumerate(zip(ranked.rows, ranked.values, strict=True), start=1):
        rows.append(
            [str(rank), f"`{dev.ids[row]}`"]
            + [_cell(text) for text in dev.texts[row]]
            + [
                label_text(task, float(dev.labels[row]), spec.label_kind),
                label_text(task, float(pred[row]), spec.label_kind),
                f"{value:.3f}",
            ]
        )
    if not rows:
        return "No wrong predictions on dev.\n"
    return _md_table(header, rows) + "\n"


# ---------------------------------------------------------------------------------------------
# The report.


def _task_report(
    run_dir: Path, out: Path, config: Config, task: str
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Plot one task and rank its errors for summary.md.

    Returns its figures as (caption, file name), its worst-errors lines, and notes on anything
    missing.
    """
    spec = TASKS[task]
    pred_path = run_dir / "predictions" / f"{task}-dev.csv"
    if not pred_path.is_file():
        return [], [], [f"{task}: no dev predictions ({pred_path.name} missing): run unfinished?"]
    dev = read_task_file(
        Path(config.data.dir) / spec.files["dev"],
        spec,
        "dev",
        on_bad_row=config.data.on_bad_row,
        limit=config.data.dev_limit,
    )
    pred_ids, pred = read_predictions(pred_path)
    check_ids(pred_path, pred_ids, dev)
    gold = np.asarray(dev.labels, dtype=np.float64)
    notes: list[str] = []
    if spec.label_kind == "score":
        r = pearson(pred, gold)
        name = f"{task}-scatter.png"
        plot_scatter(
            gold,
            pred,
            score_edges(spec),
            f"{task} dev: Pearson r = {r:.3f} (n={len(gold)})",
            out / name,
        )
        figure = [(f"{task}: predicted vs gold", name)]
        ranked = worst_errors(spec.label_kind, gold, pred, None)
    else:
        n = num_labels(spec)
        if not np.all((pred == np.round(pred)) & (pred >= 0) & (pred < n)):
            raise ReportError(f"{pred_path}: predictions must be class numbers in 0..{n - 1}")
        acc = accuracy(pred, gold)
        name = f"{task}-confusion.png"
        plot_confusion(
            confusion_matrix(gold, pred, n),
            label_names(task, n),
            f"{task} dev: accuracy {acc:.3f} (n={len(gold)})",
            out / name,
        )
        figure = [(f"{task}: confusion matrix", name)]
        outputs, reason = load_outputs(
            run_dir / "predictions" / f"{task}-dev-outputs.npy", spec, len(gold)
        )
        if reason:
            notes.append(f"{task}: errors ranked without confidences: {reason}.")
        ranked = worst_errors(spec.label_kind, gold, pred, outputs)
    errors = [
        f"### {task} ({spec.label_kind})",
        "",
        f"{len(ranked.rows)} rows shown: {ranked.how}.",
        "",
        _errors_section(task, spec, dev, pred, ranked),
    ]
    return figure, errors, notes


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/`` (summary.md, curves.png and one figure per task); return it.

    Raises ``ReportError`` when the run folder lacks ``config.toml`` or ``metrics.jsonl``, or
    when a prediction file does not hold the dev rows in dev-file order. A run without
    ``final.json`` or predictions (still training) gets a partial report that says so. The
    config's ``data.dir`` is used as written, so a relative one resolves against the current
    directory, as it did for the training run.
    """
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.toml", run_dir / "metrics.jsonl"
    for path in (config_path, metrics_path):
        if not path.is_file():
            raise ReportError(f"{path}: not found; is {run_dir} a training run folder?")
    config = load_config(config_path)
    tasks = list(config.train.tasks)
    records = read_metrics(metrics_path)
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text(encoding="utf-8")) if final_path.is_file() else None
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    best_epoch = final.get("best_epoch") if final else None
    lines = [f"# Run report: {run_dir.resolve().name}", ""]
    lines += [
        f"Tasks: {', '.join(tasks)}. Model: `{config.model.name}` ({config.model.mode}).",
        "",
    ]
    if final:
        dev = final.get("dev", {})
        keys = [f"{t}_{TASKS[t].metric}" for t in tasks] + ["overall_mean", "overall_leaderboard"]
        lines += [
            f"## Best epoch: {best_epoch}",
            "",
            "Dev metrics of the best epoch's model (re-scored after training):",
            "",
            _md_table(["metric", "dev"], [[_metric_label(k), _num(dev.get(k))] for k in keys]),
            "",
            _overall_note(tasks),
            "",
        ]
        wall = final.get("train_wall_seconds")
        wall_text = _duration(wall) if isinstance(wall, int | float) else "unknown"
        lines += [
            f"Total training wall time: {wall_text}; device: {final.get('device', 'unknown')}; "
            f"bf16: {final.get('bf16', 'unknown')}.",
            "",
        ]
    else:
        lines += [f"**Run not finished**: no {final_path.name} yet.", "", _overall_note(tasks), ""]
    overlaps = PRETRAINING_OVERLAP.get(config.model.name, {})
    lines += [f"- Note on {t}: {overlaps[t]}" for t in tasks if t in overlaps]
    if any(t in overlaps for t in tasks):
        lines.append("")

    if records:
        lines += _epoch_tables(records, tasks)
        plot_curves(records, tasks, out / "curves.png", best_epoch)
        figures = [("training curves", "curves.png")]
        if any("calibration" in r for r in records):
            lines += _calibration_table(records)
        if any("conflicts" in r for r in records):
            lines += _conflict_table(records)
            plot_conflicts(joined_step_log(records, "conflicts"), out / "conflicts.png")
            figures.append(("gradient cosines and norm ratios by step", "conflicts.png"))
        if any("task_weights" in r for r in records):
            plot_task_weights(joined_step_log(records, "task_weights"), out / "task-weights.png")
            figures.append(("task weights by step", "task-weights.png"))
    else:
        lines += ["No epoch has finished yet (metrics.jsonl is empty).", ""]
        figures: list[tuple[str, str]] = []

    error_lines: list[str] = []
    notes: list[str] = []
    for task in tasks:
        task_figures, task_errors, task_notes = _task_report(run_dir, out, config, task)
        figures += task_figures
        error_lines += task_errors
        notes += task_notes

    lines += ["## Figures", ""]
    lines += [f"- [{name}]({name}): {alt}" for alt, name in figures]
    lines += [""] + [line for alt, name in figures for line in (f"![{alt}]({name})", "")]
    if error_lines or notes:
        lines += [f"## Worst dev errors (up to {WORST_K} per task)", ""]
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
        lines += error_lines
    lines += [
        "## Resolved config",
        "",
        "```toml",
        config_path.read_text(encoding="utf-8").rstrip(),
        "```",
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    log.info("report written to %s", out)
    return out
