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
