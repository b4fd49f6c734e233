"""``minbert ensemble RUN... --out DIR``: the runs' predictions combined, and (``--soup``) their
weights averaged into one model, each scored on dev with prediction files for dev and test.

- class tasks (SST, CFIMDB): the mean of the members' class probabilities;
- binary tasks (Quora): the mean of the members' calibrated probabilities (each member's
  sigmoid of its logit less its own threshold), then the ensemble's own threshold fitted on
  the training rows that every member held out (never dev); when the members held out too
  few rows in common (runs on different seeds hold out different rows), p > 0.5 is kept;
- score tasks (STS): the mean of the members' scores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from minbert.data.batching import EncodedTask
from minbert.data.io import write_predictions
from minbert.data.splits import load_split, load_training_data
from minbert.data.tasks import TASKS
from minbert.device import use_bf16
from minbert.errors import UserError
from minbert.eval.evaluate import evaluate, predict, score
from minbert.eval.metrics import best_threshold, overall_scores
from minbert.run.atomic import write_atomic
from minbert.run.model_dir import load_model_dir, save_model_dir

log = logging.getLogger(__name__)
MIN_SHARED_HELDOUT = 200  # fewer shared held-out rows than this: no threshold is fitted


class EnsembleError(UserError, ValueError):
    """Runs that cannot be combined."""


class Member:
    def __init__(self, path: Path):
        self.path = path
        self.model, self.tokenizer, self.config = load_model_dir(path)
        self.vocab = hashlib.sha256(Path(self.tokenizer.vocab_file).read_bytes()).hexdigest()
        self.bf16 = use_bf16(self.config.train.precision, torch.device("cpu"))
        self._splits: dict[tuple[str, str], EncodedTask] = {}
        self._heldout: dict[str, EncodedTask] | None = None

    def split(self, task: str, split: str) -> EncodedTask:
        """One split as this member reads it (read and tokenised once)."""
        if (task, split) not in self._splits:
            self._splits[task, split] = load_split(self.config, task, split, self.tokenizer)
        return self._splits[task, split]

    def outputs(self, task: str, split: str):
        data = self.split(task, split)
        return data, predict(self.model, data, self.config.train.eval_batch_size, "cpu", self.bf16)

    def heldout(self, task: str) -> EncodedTask | None:
        """The training rows this member held out to calibrate ``task`` (never trained on)."""
        if not self.config.head(task).calibrate:
            return None
        if self._heldout is None:
            self._heldout = load_training_data(self.config, self.tokenizer)[1]
        return self._heldout[task]


def load_members(runs: list[str | Path]) -> list[Member]:
    if len(runs) < 2:
        raise EnsembleError("an ensemble needs two or more runs")
    members = [Member(Path(r)) for r in runs]
    first = members[0]
    for m in members[1:]:
        if m.model.tasks != first.model.tasks:
            raise EnsembleError(
                f"{m.path} trained {m.model.tasks}, {first.path} trained {first.model.tasks}: "
                "an ensemble's runs train the same tasks"
            )
        if m.vocab != first.vocab or m.tokenizer.lowercase != first.tokenizer.lowercase:
            raise EnsembleError(
                f"{m.path} and {first.path} use different tokenizers (vocab.txt or lower-casing)"
            )
    return members


def _probabilities(kind: str, outputs: np.ndarray) -> np.ndarray:
    if kind == "class":
        z = outputs - outputs.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)
    if kind == "binary":
        return 1 / (1 + np.exp(-outputs.astype(np.float64)))
    return outputs


def _combine(task: str, members: list[Member], split: str):
    """(data, each member's (data, Predictions), the mean of the members' probabilities, or
    of their scores)."""
    spec = TASKS[task]
    results = [m.outputs(task, split) for m in members]
    data = results[0][0]
    for m, (other, _) in zip(members[1:], results[1:], strict=True):
        if other.ids != data.ids:
            raise EnsembleError(
                f"{m.path}: its {task} {split} rows differ from {members[0].path}'s"
            )
    if spec.label_kind == "score":
        return data, results, np.mean([p.values for _, p in results], axis=0)
    return (
        data,
        results,
        np.mean([_probabilities(spec.label_kind, p.outputs) for _, p in results], axis=0),
    )


def run_ensemble(
    runs: list[str | Path], out: str | Path, soup: bool = False, overwrite: bool = False
) -> dict:
    out = Path(out)
    if (out / "ensemble.json").exists() and not overwrite:
        raise EnsembleError(f"{out} holds an ensemble; give another --out, or --overwrite")
    started = time.monotonic()
    members = load_members(runs)
    tasks = members[0].model.tasks
    summary: dict = {
        "members": [str(m.path) for m in members],
        "dev": {},
        "members_dev": {},
        "thresholds": {},
    }
    per_task: dict[str, float] = {}
    predictions: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}
    for task in tasks:
        spec = TASKS[task]
        threshold = 0.5
        if spec.label_kind == "binary":
            threshold = _fit_threshold(task, members, summary)
        for split in ("dev", "test"):
            data, results, combined = _combine(task, members, split)
            if spec.label_kind == "class":
                values = combined.argmax(-1)
            elif spec.label_kind == "binary":
                values = (combined > threshold).astype(np.int64)
            else:
                values = combined
            predictions[(task, split)] = (data.ids, values)
            if split == "dev":
                value = score(task, values, data.labels)
                per_task[task] = value
                summary["dev"][f"{task}_{spec.metric}"] = value
                summary["members_dev"][f"{task}_{spec.metric}"] = [
                    score(task, p.values, data.labels) for _, p in results
                ]
    summary["dev"].update(overall_scores(per_task, {t: TASKS[t].metric for t in per_task}))
    if soup:
        summary["soup"] = _soup(members, out / "soup")
    for (task, split), (ids, values) in predictions.items():
        write_predictions(
            out / "predictions" / f"{task}-{split}.csv", ids, values, TASKS[task].label_kind
        )
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    write_atomic(out / "ensemble.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _fit_threshold(task: str, members: list[Member], summary: dict) -> float:
    """The ensemble's decision threshold on its mean probability, fitted on the training rows
    every member held out; 0.5 when they share too few."""
    held = [m.heldout(task) for m in members]
    shared = set.intersection(*(set(h.ids) if h is not None else set() for h in held))
    if len(shared) < MIN_SHARED_HELDOUT:
        summary["thresholds"][task] = {
            "threshold": 0.5,
            "fitted_on": 0,
            "why": f"the members hold out {len(shared)} training rows in common (fewer than "
            f"{MIN_SHARED_HELDOUT}): each member's own calibration is kept, p > 0.5",
        }
        return 0.5
    probabilities, labels = [], None
    for m, rows_of in zip(members, held, strict=True):
        rows = np.array([i for i, row_id in enumerate(rows_of.ids) if row_id in shared])
        data = rows_of.subset(rows, "heldout")
        order = np.argsort(data.ids)
        p = predict(m.model, data, m.config.train.eval_batch_size, "cpu", m.bf16)
        probabilities.append(_probabilities("binary", p.outputs)[order])
        labels = data.labels[order]
    mean = np.clip(np.mean(probabilities, axis=0), 1e-7, 1 - 1e-7)
    logit_threshold, accuracy = best_threshold(np.log(mean / (1 - mean)), labels)
    threshold = float(1 / (1 + np.exp(-logit_threshold)))
    summary["thresholds"][task] = {
        "threshold": threshold,
        "fitted_on": len(shared),
        "heldout_accuracy": accuracy,
    }
    return threshold


def _soup(members: list[Member], folder: Path) -> dict:
    """The members' weights averaged (a uniform "model soup", Wortsman et al. 2022): one
    model, scored on dev, saved as a model directory."""
    first = members[0]
    states = [m.model.state_dict() for m in members]
    for m, state in zip(members[1:], states[1:], strict=True):
        shapes = {k: v.shape for k, v in state.items()}
        if shapes != {k: v.shape for k, v in states[0].items()}:
            raise EnsembleError(f"{m.path} and {first.path} have different weights: no soup")
        if m.config.model.name != first.config.model.name:
            raise EnsembleError(f"{m.path} and {first.path} start from different models: no soup")
    averaged = {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
        if states[0][k].is_floating_point()
        else states[0][k]
        for k in states[0]
    }
    model = copy.deepcopy(first.model)
    model.load_state_dict(averaged, strict=True)
    datasets = {t: first.split(t, "dev") for t in model.tasks}
    metrics, _ = evaluate(model, datasets, first.config.train.eval_batch_size, "cpu", first.bf16)
    save_model_dir(
        model, first.tokenizer, first.config, folder, {"soup_of": [str(m.path) for m in members]}
    )
    return {"dev": metrics, "model_dir": str(folder)}
