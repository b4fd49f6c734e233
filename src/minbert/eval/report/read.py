"""Reading a run folder for its report, and the pure numeric helpers over what was read.

Every path comes from ``RunDir`` (``minbert.run.layout``). The helpers (``confusion_matrix``,
``bucket_errors``, ``worst_errors``, ``ordered_keys``) are pure and tested on their own.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minbert.config import Config, load_config
from minbert.data.io import TaskData, read_task_file
from minbert.data.tasks import TASKS, TaskSpec
from minbert.run.layout import RunDir, RunFileError

# Display names of class labels, keyed by task; tasks not listed show the numbers.
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "sst": ("very negative", "negative", "neutral", "positive", "very positive"),
    "cfimdb": ("negative", "positive"),
    "quora": ("not duplicate", "duplicate"),
}
WORST_K = 10  # rows per task in the worst-errors tables


class ReportError(RunFileError):
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


def check_run(run: RunDir) -> None:
    """A run folder must hold ``config.toml`` and ``metrics.jsonl`` to be reported on."""
    for path in (run.config, run.metrics):
        if not path.is_file():
            raise ReportError(f"{path}: not found; is {run.root} a training run folder?")


def read_config(run: RunDir) -> Config:
    return load_config(run.config)


def read_final(run: RunDir) -> dict | None:
    """The summary written when the run ended, or None while it is still training."""
    return json.loads(run.final.read_text(encoding="utf-8")) if run.final.is_file() else None


def read_dev(config: Config, task: str) -> TaskData:
    """The dev rows the run was scored on: its config's data dir, bad-row rule and limit."""
    spec = TASKS[task]
    return read_task_file(
        Path(config.data.dir) / spec.files["dev"],
        spec,
        "dev",
        on_bad_row=config.data.on_bad_row,
        limit=config.data.dev_limit,
    )


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


def ordered_keys(first: list[str], dicts: Iterable[dict | None]) -> list[str]:
    """``first``, then every other key of ``dicts`` that holds a number, in order of first
    appearance: the columns of a table over epochs, whatever objectives a run logged."""
    keys = list(first)
    for d in dicts:
        for key, value in (d or {}).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and key not in keys:
                keys.append(key)
    return keys


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
