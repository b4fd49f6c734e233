"""The markdown side of a run's report: tables, ``summary.md`` and ``write_report``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from minbert import machine
from minbert.config import Config
from minbert.data.io import TaskData
from minbert.data.tasks import TASKS, TaskSpec
from minbert.eval.metrics import accuracy, pearson
from minbert.eval.report.plots import (
    plot_conflicts,
    plot_confusion,
    plot_curves,
    plot_expert_usage,
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
    ordered_keys,
    read_config,
    read_dev,
    read_final,
    read_predictions,
    score_edges,
    worst_errors,
)
from minbert.model.adapters import describe_adapter
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


# Labels of the dev metrics that are no task's ``<task>_<metric>``: the overall scores, and
# the pre-training objectives' own (objectives/mlm.py, eval/zero_shot.py). Others show the key.
METRIC_LABELS = {
    "overall_mean": "overall (mean)",
    "overall_leaderboard": "overall (leaderboard)",
    "mlm_accuracy": "MLM masked-token accuracy (held-out text)",
    "mlm_perplexity": "MLM perplexity (held-out text; lower is better)",
    "sts_zeroshot_pearson": "zero-shot STS Pearson r (cosine of pooled embeddings)",
    "sts_zeroshot_spearman": "zero-shot STS Spearman rho (cosine of pooled embeddings)",
}
# Shorter forms for table columns and legends, where the long ones would not fit.
COLUMN_LABELS = {
    "overall_mean": "overall (mean)",
    "overall_leaderboard": "overall (leaderboard)",
    "mlm_accuracy": "MLM accuracy",
    "mlm_perplexity": "MLM perplexity",
    "sts_zeroshot_pearson": "zero-shot STS r",
    "sts_zeroshot_spearman": "zero-shot STS rho",
}
OVERALL_KEYS = ["overall_mean", "overall_leaderboard"]


def _metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_", " "))


def _column_label(key: str) -> str:
    return COLUMN_LABELS.get(key, key.replace("_", " "))


def _metric_num(key: str, value: object) -> str:
    # a perplexity runs into the thousands early on: four decimals would be noise
    return _num(value, 2 if key.endswith("_perplexity") else 4)


def _objective_name(config: Config, name: str) -> str:
    # SimCSE's two modes are different objectives (a sentence and itself, or labelled pairs)
    return f"simcse {config.pretrain.simcse.mode}" if name == "simcse" else name


def _trained_line(config: Config) -> str:
    """The header's line on what trained: the tasks and any auxiliary objectives beside them
    (with their share of the steps and loss weight), or a pre-training run's objectives."""
    tasks, objectives = list(config.train.tasks), config.pretrain.enabled()
    model = f"Model: `{config.model.name}` ({config.model.mode})."
    if config.adapter.on:
        model += f" Adapter: {describe_adapter(config.adapter)}."
    if not tasks:
        names = ", ".join(_objective_name(config, n) for n in objectives) or "none"
        weights = ""
        if len(objectives) > 1:  # one objective's weight only scales its loss
            weights = "; loss weights " + ", ".join(
                f"{n} {getattr(config.pretrain, n).weight:g}" for n in objectives
            )
        return f"Objectives: {names} (pre-training, no task{weights}). {model}"
    line = f"Tasks: {', '.join(tasks)}"
    if objectives:
        aux = []
        for name in objectives:
            cfg = getattr(config.pretrain, name)
            aux.append(
                f"{_objective_name(config, name)} (share {cfg.share:g}, weight {cfg.weight:g})"
            )
        line += f"; auxiliary: {', '.join(aux)}"
    return f"{line}. {model}"


def _machine_text(final: dict) -> str:
    if "machine" in final:
        return f"machine: {machine.label(final['machine'])}"
    # final.json written before runs recorded their machine
    return f"device: {final.get('device', 'unknown')}; bf16: {final.get('bf16', 'unknown')}"


def _parameters_line(run: RunDir, final: dict) -> str:
    counts = final.get("parameters") or {}
    line = "Parameters: "
    if counts:
        trainable, total = counts["trainable"], counts["total"]
        line += f"{trainable:,} trained of {total:,} ({100 * trainable / total:.2f}%)"
    else:
        line += "not recorded"
    weights = run.best / "model.safetensors"
    if weights.is_file():
        meta = json.loads((run.best / "meta.json").read_text(encoding="utf-8"))
        stored = "what changed, on its base" if meta.get("base") else "the whole model"
        line += f"; checkpoint `best/model.safetensors` {weights.stat().st_size / 2**20:.1f} MiB ({stored})"
    return line + "."


def _usage_table(usage: dict[str, list[float]], epoch: int) -> list[str]:
    experts = len(next(iter(usage.values())))
    header = ["task", *(f"expert {e}" for e in range(experts))]
    rows = [[task, *(f"{share:.3f}" for share in shares)] for task, shares in usage.items()]
    return [
        f"### Expert usage, epoch {epoch}",
        "",
        "Share of each task's token assignments (top-k, summed over the routed layers); "
        f"uniform is {1 / experts:.3f}.",
        "",
        _md_table(header, rows),
        "",
    ]


def _loss_names(config: Config, records: list[dict]) -> list[str]:
    """What trained, in the columns of the per-epoch tables: the tasks, the switched-on
    pre-training objectives, then anything else the records hold a loss or a count for."""
    tasks = list(config.train.tasks)
    named = tasks + [n for n in config.pretrain.enabled() if n not in tasks]
    fields = [r.get(f) for r in records for f in ("train_loss", "examples")]
    return ordered_keys(named, fields)


def _dev_keys(tasks: list[str], devs: list[dict | None]) -> list[str]:
    """The dev metrics to show: each task's, both overall forms (only with tasks: they are
    means over tasks), then the objectives' own ones the run logged (MLM, zero-shot STS)."""
    known = [f"{t}_{TASKS[t].metric}" for t in tasks] + (OVERALL_KEYS if tasks else [])
    return ordered_keys(known, devs)


def _overall_note(tasks: list[str], extra: list[str]) -> str:
    pearson_tasks = [t for t in tasks if TASKS[t].metric == "pearson"]
    plain = "**overall (mean)** is the plain mean of the task metrics above"
    if pearson_tasks:
        named = ", ".join(pearson_tasks)
        note = (
            f"{plain}; **overall (leaderboard)** is the CS224N leaderboard form, which maps the "
            f"STS-style Pearson r ({named}) to (r + 1) / 2 before averaging, so every term "
            "lies in [0, 1]."
        )
    else:
        note = (
            f"{plain}; **overall (leaderboard)** is the CS224N leaderboard form, which maps STS "
            "Pearson r to (r + 1) / 2 before averaging. No Pearson task was trained here, so "
            "the two forms agree."
        )
    if extra:
        note += f" The auxiliary objectives' metrics ({', '.join(extra)}) are not in either."
    return note


def _selection_note(select_by: str) -> str:
    if select_by in OVERALL_KEYS:
        return f"The best epoch is chosen by {_metric_label(select_by)}."
    return (
        f"The best epoch is chosen by {_column_label(select_by)} (train.select_by = `{select_by}`)."
    )


def _notes(config: Config, dev_keys: list[str]) -> str:
    """The paragraph under the best-epoch table: what the overall scores are (runs with
    tasks) and which metric picked the best epoch (``train.select_by``)."""
    tasks = list(config.train.tasks)
    selection = _selection_note(config.train.select_by)
    if not tasks:
        return selection
    task_keys = {f"{t}_{TASKS[t].metric}" for t in tasks} | set(OVERALL_KEYS)
    extra = [_column_label(k) for k in dev_keys if k not in task_keys]
    return f"{_overall_note(tasks, extra)} {selection}"


def _epoch_tables(records: list[dict], names: list[str], dev_keys: list[str]) -> list[str]:
    header = (
        ["epoch"]
        + [f"{n} loss" for n in names]
        + [_column_label(k) for k in dev_keys]
        + ["train s"]
    )
    rows = []
    for r in records:
        losses, dev = r.get("train_loss", {}), r.get("dev", {})
        rows.append(
            [str(r["epoch"])]
            + [_num(losses.get(n)) for n in names]
            + [_metric_num(k, dev.get(k)) for k in dev_keys]
            + [_num(r.get("train_seconds"), 1)]
        )
    seen_rows = []
    for r in records:
        seen, planned = r.get("examples", {}), r.get("planned_examples", {})
        cells = [str(r["epoch"])]
        for n in names:
            count = seen.get(n)
            cell = "–" if count is None else f"{count:,}"
            if count is not None and planned.get(n) not in (None, count):
                cell += f" of {planned[n]:,} planned"
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
        _md_table(["epoch", *names], seen_rows),
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

    A run without tasks (``minbert pretrain``) gets the same report less the per-task parts:
    its objectives' losses and dev metrics (MLM, zero-shot STS) fill the tables and curves.

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
    dev_keys = _dev_keys(tasks, [r.get("dev") for r in records] + [(final or {}).get("dev")])
    lines = [f"# Run report: {run.root.resolve().name}", ""]
    lines += [_trained_line(config), ""]
    if final:
        dev = final.get("dev", {})
        rows = [[_metric_label(k), _metric_num(k, dev.get(k))] for k in dev_keys]
        lines += [
            f"## Best epoch: {best_epoch}",
            "",
            "Dev metrics of the best epoch's model (re-scored after training):",
            "",
            _md_table(["metric", "dev"], rows),
            "",
            _notes(config, dev_keys),
            "",
        ]
        wall = final.get("train_wall_seconds")
        wall_text = _duration(wall) if isinstance(wall, int | float) else "unknown"
        lines += [
            f"Total training wall time: {wall_text}; {_machine_text(final)}.",
            "",
            _parameters_line(run, final),
            "",
        ]
    else:
        lines += [f"**Run not finished**: no {run.final.name} yet.", "", _notes(config, dev_keys)]
        lines.append("")
    overlaps = PRETRAINING_OVERLAP.get(config.model.name, {})
    lines += [f"- Note on {t}: {overlaps[t]}" for t in tasks if t in overlaps]
    if any(t in overlaps for t in tasks):
        lines.append("")

    if records:
        names = _loss_names(config, records)
        lines += _epoch_tables(records, names, dev_keys)
        # overall (mean) is left off the curves: the leaderboard form is the one selected on
        curves = {k: _column_label(k) for k in dev_keys if k != "overall_mean"}
        plot_curves(records, names, curves, out / "curves.png", best_epoch)
        figures = [("training curves", "curves.png")]
        if any("calibration" in r for r in records):
            lines += _calibration_table(records)
        if any("conflicts" in r for r in records):
            lines += _conflict_table(records)
            plot_conflicts(joined_step_log(records, "conflicts"), out / "conflicts.png")
            figures.append(("gradient cosines and norm ratios by step", "conflicts.png"))
        usage = [r for r in records if r.get("expert_usage")]
        if usage:
            last = usage[-1]
            lines += _usage_table(last["expert_usage"], last["epoch"])
            plot_expert_usage(last["expert_usage"], last["epoch"], out / "expert-usage.png")
            figures.append(("expert usage by task", "expert-usage.png"))
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
