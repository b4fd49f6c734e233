"""Gradient-conflict analysis: how the tasks' gradients on the shared encoder relate.

Every ``train.log_conflicts_every`` steps the trainer takes each task's gradient of its loss
on the shared parameters (``flat_gradient``: no ``.grad`` is touched) and logs, per task pair,
their cosine (a conflict is cosine < 0) and, per task, the gradient norm and its ratio to the
mean norm of the tasks.

A step under round_robin or sequential holds one task; the other tasks then get a probe
batch: ``train.batch_size`` rows drawn from their training data by a generator seeded with
(seed, step, task), under a forked torch RNG. The probes touch neither the data streams nor
the random state the training uses, so logging conflicts does not change the run; a resumed
run draws the same probes. Task losses are measured without a SMART term.

``log_conflicts`` and ``log_weights`` (the per-step weights of strategies that learn them)
append to the epoch's step log, a dict of columns kept in the run state (so a resume goes on
with it); ``epoch_fields`` turns it into fields of that epoch's ``metrics.jsonl`` record.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from minbert.data.batching import Batch, EncodedTask


def pair_name(a: str, b: str) -> str:
    return f"{a}/{b}"


def conflict_stats(grads: dict[str, Tensor]) -> dict:
    """Pairwise cosines and per-task norms of flat task gradients (tasks in the dict's order)."""
    norms = {t: float(torch.linalg.vector_norm(g)) for t, g in grads.items()}
    cosine = {}
    for a, b in itertools.combinations(grads, 2):
        denominator = norms[a] * norms[b]
        dot = float(torch.dot(grads[a], grads[b]))
        cosine[pair_name(a, b)] = dot / denominator if denominator > 0 else 0.0
    mean_norm = sum(norms.values()) / len(norms)
    ratio = {t: n / mean_norm if mean_norm > 0 else 1.0 for t, n in norms.items()}
    return {"cosine": cosine, "grad_norm": norms, "norm_ratio": ratio}


def probe_batch(data: EncodedTask, size: int, seed: int, step: int, pad_id: int = 0) -> Batch:
    """``size`` rows of ``data`` chosen by (seed, step, task) alone: the same on a resume."""
    rng = np.random.default_rng([seed, step, *data.task.encode()])
    rows = np.sort(rng.choice(len(data), size=min(size, len(data)), replace=False))
    return data.batch(rows, pad_id)


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def log_weights(columns: dict, step: int, weights: dict[str, float], tasks: list[str]) -> None:
    """Append one step's task weights to the epoch's step log ``columns`` (in place)."""
    log = columns.setdefault("task_weights", {"step": []})
    log["step"].append(step)
    for t in tasks:  # a task not in this step has no weight in it: null
        log.setdefault(t, []).append(_rounded(weights.get(t)))


def log_conflicts(columns: dict, step: int, stats: dict) -> None:
    """Append one step's ``conflict_stats`` to the epoch's step log ``columns`` (in place)."""
    log = columns.setdefault("conflicts", {"step": []})
    log["step"].append(step)
    for kind in ("cosine", "grad_norm", "norm_ratio"):
        for key, value in stats[kind].items():
            log.setdefault(kind, {}).setdefault(key, []).append(_rounded(value))


def epoch_fields(columns: dict) -> dict:
    """Fields of an epoch record from its step log:

    - ``task_weights`` (strategies whose weights change: gradnorm, uncertainty):
      ``{"step": [s, ...], "<task>": [w, ...]}``, one entry per step, null where the task was
      not in the step;
    - ``conflicts`` (``train.log_conflicts_every`` > 0): ``{"step": [...], "cosine":
      {"a/b": [...]}, "grad_norm": {"<task>": [...]}, "norm_ratio": {"<task>": [...]},
      "conflict_rate": {"a/b": fraction of this epoch's logged steps with cosine < 0},
      "mean_cosine": {"a/b": ...}, "mean_norm_ratio": {"<task>": ...}}``.
    """
    fields = {}
    if "task_weights" in columns:
        fields["task_weights"] = columns["task_weights"]
    if "conflicts" in columns:
        log = dict(columns["conflicts"])
        log["conflict_rate"] = {
            p: _mean([c < 0 for c in v if c is not None]) for p, v in log["cosine"].items()
        }
        log["mean_cosine"] = {p: _mean(v) for p, v in log["cosine"].items()}
        log["mean_norm_ratio"] = {t: _mean(v) for t, v in log["norm_ratio"].items()}
        fields["conflicts"] = log
    return fields


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    return _rounded(sum(values) / len(values)) if values else None
