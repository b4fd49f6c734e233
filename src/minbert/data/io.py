"""Strict reading of the task TSV files: every bad row is reported as ``file:line: field: problem``.

The files are pandas-written TSV (minimal quoting, ``"`` doubled inside quoted fields), one
record per physical line. Each line is decoded and parsed on its own, so one malformed row
(an unterminated quote, say) cannot swallow the rows after it, and every problem is found in
one pass. By default any bad row is an error; ``on_bad_row="skip"`` drops them and says how
many and where.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minbert.data.tasks import TaskSpec
from minbert.errors import UserError

log = logging.getLogger(__name__)
MAX_REPORTED = 20


class DataError(UserError, ValueError):
    """Input data that cannot be used as it is."""


@dataclass(frozen=True)
class BadRow:
    path: Path
    line: int
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.problem}"


@dataclass
class TaskData:
    """The rows of one split of one task, as read from disk."""

    task: str
    split: str
    path: Path
    ids: list[str]
    texts: list[tuple[str, ...]]  # one entry per row: (sentence,) or (sentence1, sentence2)
    labels: np.ndarray | None  # None for unlabelled (test) files
    skipped: list[BadRow]

    def __len__(self) -> int:
        return len(self.ids)


# Characters that show nothing: controls (NUL, ...), format characters (zero-width spaces and
# joiners, the byte-order mark) and every kind of space.
_INVISIBLE = ("Cc", "Cf", "Zs", "Zl", "Zp")


def is_blank(text: str) -> bool:
    """True when ``text`` has nothing to read once invisible characters are removed."""
    return all(unicodedata.category(ch) in _INVISIBLE for ch in text)


def _parse_line(raw: bytes, path: Path, line_no: int) -> list[str] | BadRow:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow(path, line_no, "line", f"invalid UTF-8 at byte {exc.start}")
    text = text.rstrip("\r\n")
    try:
        return next(csv.reader([text], delimiter="\t", quotechar='"', strict=True))
    except csv.Error as exc:
        return BadRow(path, line_no, "line", f"malformed quoting ({exc})")
    except StopIteration:
        return []


def read_task_file(
    path: str | Path,
    spec: TaskSpec,
    split: str,
    labelled: bool | None = None,
    on_bad_row: str = "error",
    limit: int = 0,
) -> TaskData:
    """Read one task file; ``labelled=None`` means: labelled unless the split is ``test``."""
    path = Path(path)
    if labelled is None:
        labelled = split != "test"
    if not path.is_file():
        raise DataError(f"{path}: file not found (task {spec.name}, split {split})")
    lines = path.read_bytes().removeprefix(codecs.BOM_UTF8).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file, expected a header row")

    header = _parse_line(lines[0], path, 1)
    if isinstance(header, BadRow):
        raise DataError(str(header))
    needed = ["id", *spec.text_columns] + ([spec.label_column] if labelled else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}:1: header: missing column(s) {missing}; found {header}")
    col = {name: header.index(name) for name in needed}

    ids: list[str] = []
    texts: list[tuple[str, ...]] = []
    labels: list[float] = []
    bad: list[BadRow] = []
    seen_ids: dict[str, int] = {}
    for line_no, raw in enumerate(lines[1:], start=2):
        if limit and len(ids) >= limit:
            break
        row = _parse_line(raw, path, line_no)
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        if len(row) != len(header):
            bad.append(BadRow(path, line_no, "row", f"{len(row)} columns, expected {len(header)}"))
            continue
        problems = []
        row_id = row[col["id"]].strip()
        if not row_id:
            problems.append(BadRow(path, line_no, "id", "empty"))
        elif row_id in seen_ids:
            problems.append(
                BadRow(path, line_no, "id", f"{row_id!r} repeats line {seen_ids[row_id]}")
            )
        row_texts = tuple(row[col[c]] for c in spec.text_columns)
        for name, value in zip(spec.text_columns, row_texts, strict=True):
            if is_blank(value):
                problems.append(BadRow(path, line_no, name, "empty text"))
        label = 0.0
        if labelled:
            try:
                label = spec.parse_label(row[col[spec.label_column]])
            except ValueError as exc:
                problems.append(BadRow(path, line_no, spec.label_column, str(exc)))
        if problems:
            bad.extend(problems)
            continue
        seen_ids[row_id] = line_no
        ids.append(row_id)
        texts.append(row_texts)
        labels.append(label)

    if bad:
        _report_bad_rows(path, bad, on_bad_row)
    if not ids:
        raise DataError(f"{path}: no usable rows")
    dtype = np.int64 if spec.label_kind == "class" else np.float32
    return TaskData(
        task=spec.name,
        split=split,
        path=path,
        ids=ids,
        texts=texts,
        labels=np.asarray(labels, dtype=dtype) if labelled else None,
        skipped=bad,
    )


def _report_bad_rows(path: Path, bad: list[BadRow], on_bad_row: str) -> None:
    shown = "\n  ".join(str(b) for b in bad[:MAX_REPORTED])
    more = f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
    if on_bad_row == "skip":
        lines = ", ".join(str(b.line) for b in bad[:MAX_REPORTED])
        log.warning("%s: skipped %d bad row(s) at line(s) %s%s", path, len(bad), lines, more)
        return
    raise DataError(
        f"{path}: {len(bad)} bad row(s):\n  {shown}{more}\n"
        'Fix the file, or set data.on_bad_row = "skip" to drop these rows.'
    )


def write_predictions(path: str | Path, ids: list[str], predictions: np.ndarray, kind: str) -> None:
    """``id,prediction`` CSV: integers for classes and binary labels, floats for scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "prediction"])
        for row_id, value in zip(ids, predictions, strict=True):
            writer.writerow([row_id, f"{float(value):.4f}" if kind == "score" else int(value)])
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
