"""The resumable state of a run (``RUN/last/``), saved without pickle.

Nested state (optimiser, LR schedule, gradient strategy, data streams, RNGs) is split into a
JSON tree and a flat dict of tensors: every tensor in the tree becomes ``{"__tensor__": key}``
and goes to ``state.safetensors``. Dicts with non-string keys (an optimiser's per-parameter
state is keyed by int) and tuples are tagged so they come back as they were.

Checkpoints are written through ``minbert.run.atomic`` (``swap_in``: never half-written).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from minbert.data.schedules import planned_examples
from minbert.errors import UserError
from minbert.model.loading import read_json, write_safetensors
from minbert.run.atomic import recover, swap_in, write_atomic  # noqa: F401 (recover: callers)
from minbert.run.manifest import read_checked, verify, write_manifest

STATE_FILE = "state.json"
TENSOR_FILE = "state.safetensors"


def flatten(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """JSON-able copy of ``tree``; its tensors are moved to ``tensors`` under fresh keys."""
    if isinstance(tree, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        # a copy: safetensors refuses tensors that share memory (views of one parameter)
        tensors[key] = tree.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(tree, np.ndarray):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(tree))
        return {"__ndarray__": key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: flatten(v, tensors, prefix) for k, v in tree.items()}
        return {"__items__": [[k, flatten(v, tensors, prefix)] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {"__tuple__": [flatten(v, tensors, prefix) for v in tree]}
    if isinstance(tree, list):
        return [flatten(v, tensors, prefix) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot save a {type(tree).__name__} in a training checkpoint")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy()
        if "__items__" in tree:
            return {_key(k): unflatten(v, tensors) for k, v in tree["__items__"]}
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable output folder, ...)."""


def check_finite(model: torch.nn.Module, step: int) -> None:
    """Raise (before anything is saved) when a parameter holds NaN or inf."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingError(
                f"parameter {name} holds NaN/inf after step {step}; "
                "nothing was saved over the previous checkpoint"
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator a training step may draw from."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> tuple:
    kind, keys, *rest = np.random.get_state()
    return (kind, keys.tolist(), *rest)  # uint32 keys as ints: safetensors has no uint32


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def upgrade_state(state: dict) -> dict:
    """A ``RUN/last/`` written before objectives and callbacks had their own state (keys
    ``streams``, ``smart``, ``average``) in today's layout, so such a run still resumes."""
    if "streams" not in state:
        return state
    state = dict(state)
    for task, stream in state.pop("streams").items():
        state[f"streams.{task}"] = stream
    state.setdefault("objectives", {"smart": state.pop("smart", {})})
    state.setdefault("callbacks", {"average": state.pop("average", {})})
    return state


def save_state(folder: Path, state: dict) -> None:
    """Write ``folder`` atomically: a sibling temporary folder, fsynced, then swapped in.

    A crash at any point leaves either the previous ``folder`` or the new one, never a mix:
    the old one is renamed aside only once the new one is complete on disk.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, tensors)
    write_safetensors(tensors, tmp / TENSOR_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(tree), encoding="utf-8")
    write_manifest(tmp)
    swap_in(tmp, folder)


def load_state(folder: Path) -> dict:
    """The state saved in ``folder``, verified against its manifest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no training checkpoint here (nothing to resume)")
    run = folder.parent
    advice = (
        f"The run cannot resume from {folder}. {run}/best/ keeps the best model so far "
        f"(`minbert eval {run}` checks it); to train again: "
        f"`minbert train --config {run}/config.toml --out NEW_RUN`"
    )
    verify(folder, advice)
    tree = read_checked(folder / STATE_FILE, lambda p: read_json(p, "training state"), advice)
    return unflatten(tree, read_checked(folder / TENSOR_FILE, load_file, advice))


@dataclass
class RunState:
    """Where a run stands; saved in ``RUN/last/`` with everything else a resume needs."""

    step: int = 0  # optimiser steps done (skipped ones included)
    epoch: int = 1  # the epoch in progress
    step_in_epoch: int = 0  # steps of this epoch's plan done
    best_score: float = -math.inf
    best_epoch: int = 0
    skipped: int = 0  # steps skipped for non-finite values, whole run
    # Running sums of the epoch in progress, for its log record.
    loss_sum: dict[str, float] = field(default_factory=dict)
    loss_count: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    # Extra terms of the objectives ("<objective>.<term>"), summed like the losses.
    term_sum: dict[str, float] = field(default_factory=dict)
    # Per-step task weights and gradient conflicts of the epoch in progress (conflicts.py).
    step_log: dict = field(default_factory=dict)
    epoch_train_seconds: float = 0.0  # time in training steps, epoch in progress
    elapsed_seconds: float = 0.0  # time in steps and evaluations, whole run

    def add_step(self, losses: dict[str, float], terms: dict[str, float], sizes: dict[str, int]):
        for t, value in losses.items():
            self.loss_sum[t] = self.loss_sum.get(t, 0.0) + value
            self.loss_count[t] = self.loss_count.get(t, 0) + 1
        for key, value in terms.items():
            self.term_sum[key] = self.term_sum.get(key, 0.0) + value
        for t, n in sizes.items():
            self.seen[t] = self.seen.get(t, 0) + n
        self.step_in_epoch += 1

    def epoch_record(self, tasks: list[str], plan: list, dev: dict, lr: float) -> dict:
        """The ``metrics.jsonl`` record of the epoch in progress (its first fields)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": {t: self.loss_sum[t] / self.loss_count[t] for t in self.loss_count},
            "examples": {t: self.seen.get(t, 0) for t in tasks},
            "planned_examples": planned_examples(plan),
            "skipped_steps": self.skipped,
            "dev": dev,
            "lr": lr,
            "train_seconds": round(self.epoch_train_seconds, 2),
            "elapsed_seconds": round(self.elapsed_seconds, 2),
        }

    def term_means(self) -> dict[str, float]:
        """Each extra term ("<objective>.<term>") averaged over its objective's steps."""
        return {k: v / self.loss_count[k.split(".")[0]] for k, v in self.term_sum.items()}

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum, self.loss_count, self.seen, self.term_sum = {}, {}, {}, {}
        self.step_log = {}
        self.epoch_train_seconds = 0.0
