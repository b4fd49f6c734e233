"""Atomic writes of run files and folders: ``write_atomic`` for one file, ``swap_in`` /
``recover`` for a folder (``last/``, ``best/``). A crash leaves the old version or the new
one, never a mix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def save_array(path: Path, array) -> None:
    """``numpy.save`` through a temporary file renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


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
