"""The resumable state of a run (``RUN/last/``), saved without pickle.

Nested state (optimiser, LR schedule, gradient strategy, data streams, RNGs) is split into a
JSON tree and a flat dict of tensors: every tensor in the tree becomes ``{"__tensor__": key}``
and goes to ``state.safetensors``. Dicts with non-string keys (an optimiser's per-parameter
state is keyed by int) and tuples are tagged so they come back as they were.

The atomic-write helpers every checkpoint and results file goes through live here too:
``write_atomic`` for one file, ``swap_in`` / ``recover`` for a folder (``last/``, ``best/``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


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
    save_file(tensors, tmp / TENSOR_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(tree), encoding="utf-8")
    swap_in(tmp, folder)


def load_state(folder: Path) -> dict:
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file() or not (folder / TENSOR_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no training checkpoint here (nothing to resume)")
    tree = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    return unflatten(tree, load_file(folder / TENSOR_FILE))


def fsync_tree(folder: Path) -> None:
    """Flush the files of ``folder`` and the folder's own entry list to disk."""
    for f in folder.iterdir():
        with f.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the finished ``tmp`` folder (same parent) as atomically as a
    file system allows: ``folder`` is renamed aside, ``tmp`` renamed in, the old one removed.
    A reader that finds no ``folder`` after a crash falls back to ``.folder.old``."""
    fsync_tree(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    _fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(folder: Path) -> Path:
    """``folder``, or its ``.old`` copy when a crash came between the two renames of swap_in."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.exists():
        old.rename(folder)
    return folder
