"""Metrics as pure functions of numpy arrays, and the overall multi-task score."""

from __future__ import annotations

import math

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or len(labels) == 0:
        raise ValueError(
            f"accuracy needs equal, non-empty shapes: {predictions.shape} vs {labels.shape}"
        )
    return float(np.mean(predictions == labels))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson's r; nan when either side is constant (r is undefined there)."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"pearson needs equal shapes of at least 2 values: {x.shape} vs {y.shape}")
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denom) if denom > 0 else float("nan")


METRICS = {"accuracy": accuracy, "pearson": pearson}


def overall_scores(
    task_metrics: dict[str, float], metric_names: dict[str, str]
) -> dict[str, float]:
    """Both overall forms over the tasks present.

    ``overall_mean``: plain mean of the task metrics. ``overall_leaderboard``: the CS224N
    leaderboard form, where Pearson r is mapped to (r + 1) / 2 before averaging.
    """
    if not task_metrics:
        return {}
    plain = [v for v in task_metrics.values()]
    board = [(v + 1) / 2 if metric_names[t] == "pearson" else v for t, v in task_metrics.items()]
    return {"overall_mean": float(np.mean(plain)), "overall_leaderboard": float(np.mean(board))}


def best_threshold(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The decision threshold on binary ``logits`` that is most accurate on ``labels`` (0/1),
    and that accuracy.

    Every cut between two sorted logits is tried. When several cuts tie, the middle one is
    taken, and the threshold sits halfway between the logits on either side of the cut.
    """
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or len(x) == 0:
        raise ValueError(f"best_threshold needs equal, non-empty shapes: {x.shape} vs {y.shape}")
    order = np.argsort(-x, kind="stable")
    x, y = x[order], y[order]
    # Cut k: the k largest logits are called positive. Right after a run of equal logits
    # only, so that a threshold can separate the two sides.
    positives_above = np.concatenate([[0.0], np.cumsum(y)])  # (N + 1,)
    negatives_below = (len(y) - y.sum()) - (np.arange(len(y) + 1) - positives_above)
    correct = positives_above + negatives_below
    valid = np.ones(len(y) + 1, dtype=bool)
    valid[1:-1] = x[:-1] != x[1:]
    correct = np.where(valid, correct, -1.0)
    best = np.flatnonzero(correct == correct.max())
    k = int(best[len(best) // 2])
    if k == 0:
        threshold = x[0] + 1.0
    elif k == len(x):
        threshold = x[-1] - 1.0
    else:
        threshold = (x[k - 1] + x[k]) / 2
    return float(threshold), float(correct[k] / len(y))
