"""Checkpoint manifests: ``manifest.json`` in ``best/`` and ``last/`` lists every file with
its size and SHA-256, and each safetensors file's tensor names, dtypes and shapes.

A checkpoint is verified before anything in it is parsed, so a file cut short or with bytes
changed inside (same size) is reported as that file being damaged, never as a parse error
deep in a library or, worse, loaded and trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from safetensors import safe_open

from minbert.run.layout import RunFileError

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class CheckpointError(RunFileError):
    """A checkpoint folder whose files do not match its manifest (or cannot be read)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_index(path: Path) -> dict[str, list]:
    """Name -> [dtype, shape] of each tensor in a safetensors file (its header only)."""
    index = {}
    with safe_open(path, framework="pt") as f:
        for name in sorted(f.keys()):
            tensor = f.get_slice(name)
            index[name] = [tensor.get_dtype(), list(tensor.get_shape())]
    return index


def write_manifest(folder: Path) -> None:
    """Describe every file of ``folder`` (called on the finished temporary folder)."""
    files, tensors = {}, {}
    for path in sorted(p for p in folder.iterdir() if p.name != MANIFEST):
        files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
        if path.suffix == ".safetensors":
            tensors[path.name] = tensor_index(path)
    text = json.dumps({"format": 1, "files": files, "tensors": tensors}, indent=1) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def verify(folder: Path, advice: str) -> None:
    """Raise ``CheckpointError`` naming the first damaged or missing file of ``folder``, with
    ``advice`` (what the user can do). A folder written before manifests existed is only
    logged as unverified."""
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        log.warning("%s has no %s (written by an older minbert): not verified", folder, MANIFEST)
        return
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
        checks = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{manifest_file} is damaged ({exc}). {advice}") from None
    for name, size, digest in checks:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {manifest_file}). {advice}")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"{path} is damaged: {actual} bytes where {manifest_file} says {size} (cut "
                f"short or overwritten). {advice}"
            )
        if sha256(path) != digest:
            raise CheckpointError(
                f"{path} is damaged: its SHA-256 differs from {manifest_file} (bytes were "
                f"changed). {advice}"
            )


def read_checked(path: Path, read, advice: str):
    """``read(path)``, with any parse failure reported as ``CheckpointError`` naming ``path``."""
    try:
        return read(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing. {advice}") from None
    except Exception as exc:  # safetensors, json and torch raise many types; one message
        raise CheckpointError(f"{path} cannot be read ({exc}). {advice}") from exc
