"""The markdown side of a run's report: tables, ``summary.md`` and ``write_report``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from minbert.config import Config
from minbert.data.io import TaskData
from minbert.data.tasks import TASKS, TaskSpec
from minbert.eval.metrics import accuracy, pearson
from minbert.eval.report.plots import (
    plot_conflicts,
    plot_confusion,
    plot_curves,
    plot_scatter,
    plot_task_weights,
)
from minbert.eval.report.read import (
    WORST_K,
    RankedErrors,
    ReportError,
    check_ids,
    check_run,
    confusion_matrix,
    joined_step_log,
    label_names,
    label_text,
    load_outputs,
    num_labels,
    read_config,
    read_dev,
    read_final,
    read_predictions,
    score_edges,
    worst_errors,
)
from minbert.run.layout import RunDir

log = logging.getLogger(__package__)  # the logger of the module this package replaced

# Known overlaps between a packaged model's pre-training data and a task, keyed by model name
# then task: a score on such a task is not a clean held-out measure, and the report says so.
PRETRAINING_OVERLAP: dict[str, dict[str, str]] = {
    "minilm-l6": {
        "quora": "all-MiniLM-L6-v2 was pre-trained on sentence pairs that include Quora "
        "duplicate questions, so its Quora score is not a clean held-out measure."
    },
}
TEXT_CHARS = 150  # texts in tables are cut to this many characters


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
    run: RunDir, out: Path, config: Config, task: str
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Plot one task and rank its errors for summary.md.

    Returns its figures as (caption, file name), its worst-errors lines, and notes on anything
    missing.
    """
    spec = TASKS[task]
    pred_path = run.predictions(task, "dev")
    if not pred_path.is_file():
        return [], [], [f"{task}: no dev predictions ({pred_path.name} missing): run unfinished?"]
    dev = read_dev(config, task)
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
        outputs, reason = load_outputs(run.outputs(task, "dev"), spec, len(gold))
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


def _augment_section(run: RunDir) -> list[str]:
    """What augmentation did, from ``RUN/augment.json`` (none: no section)."""
    if not run.augment.is_file():
        return []
    try:
        tasks = json.loads(run.augment.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return ["## Augmentation", "", f"{run.augment.name} is unreadable ({exc}).", ""]
    lines = ["## Augmentation", ""]
    for task, info in tasks.items():
        lines += [
            f"**{task}** ({info['settings']}): {info['rows_per_epoch']:,} rows an epoch "
            f"({info['original_rows']:,} original); {info['augmented_rows_seen']:,} augmented "
            "rows seen in training.",
            "",
            _md_table(
                ["original", "augmented (epoch 1)"],
                [
                    [_cell(" | ".join(e["original"])), _cell(" | ".join(e["augmented"]))]
                    for e in info["examples"]
                ],
            ),
            "",
        ]
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/`` (summary.md, curves.png and one figure per task); return it.

    Raises ``ReportError`` when the run folder lacks ``config.toml`` or ``metrics.jsonl``, or
    when a prediction file does not hold the dev rows in dev-file order. A run without
    ``final.json`` or predictions (still training) gets a partial report that says so. The
    config's ``data.dir`` is used as written, so a relative one resolves against the current
    directory, as it did for the training run.
    """
    run = RunDir(run_dir)
    check_run(run)
    config = read_config(run)
    tasks = list(config.train.tasks)
    records = run.read_metrics()
    final = read_final(run)
    out = run.report_dir
    out.mkdir(parents=True, exist_ok=True)

    best_epoch = final.get("best_epoch") if final else None
    lines = [f"# Run report: {run.root.resolve().name}", ""]
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
        lines += [f"**Run not finished**: no {run.final.name} yet.", "", _overall_note(tasks), ""]
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
        lines += [f"No epoch has finished yet ({run.metrics.name} is empty).", ""]
        figures: list[tuple[str, str]] = []

    error_lines: list[str] = []
    notes: list[str] = []
    for task in tasks:
        task_figures, task_errors, task_notes = _task_report(run, out, config, task)
        figures += task_figures
        error_lines += task_errors
        notes += task_notes

    lines += _augment_section(run)
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
        run.config.read_text(encoding="utf-8").rstrip(),
        "```",
        "",
    ]
    run.summary.write_text("\n".join(lines), encoding="utf-8")
    log.info("report written to %s", out)
    return out
