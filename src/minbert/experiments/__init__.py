"""Experiments over runs: seed sweeps with paired intervals (sweep.py, stats.py), Optuna
search (search.py), ensembles and soups (ensemble.py), the claims table (claims.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml_spec(path: Path, tables: set[str], error: type[Exception], what: str) -> dict:
    """A spec file's tables, or ``error`` naming the file: missing, not TOML, a table that
    is not one of ``tables``."""
    if not path.is_file():
        raise error(f"{path}: {what} spec not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise error(f"{path}: not a TOML file ({exc})") from None
    if unknown := set(data) - tables:
        known = ", ".join(f"[{t}]" for t in sorted(tables))
        raise error(f"{path}: unknown table(s) {sorted(unknown)}; a {what} spec has {known}")
    return data
