"""The layout of a run folder, named once.

Everything that writes or reads a run (trainer, callbacks, report, compare, predict, export)
asks a ``RunDir`` for a path instead of spelling a file name:

    RUN/config.toml          the resolved config the run was started with
    RUN/train.log            the log of every session of the run (appended on resume)
    RUN/metrics.jsonl        one record per finished epoch
    RUN/final.json           the summary written when the run ends
    RUN/augment.json         with augmentation on: its settings, counts and examples
    RUN/best/                the selected epoch's model directory (model_dir.py)
    RUN/last/                the resumable training state (state.py)
    RUN/predictions/<task>-<split>.csv, <task>-dev-outputs.npy
    RUN/report/summary.md, curves.png, ...
    RUN/.lock                held by the process writing the run (lock.py)

``best/`` and ``last/`` each hold a ``manifest.json`` (manifest.py): every file's size and
checksum, and each tensor's name and shape, verified when the folder is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from minbert.errors import UserError


class RunFileError(UserError, ValueError):
    """A file of a run folder that cannot be read as what it should be."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def __str__(self) -> str:
        return str(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.root / "final.json"

    @property
    def augment(self) -> Path:
        return self.root / "augment.json"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def last(self) -> Path:
        return self.root / "last"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, task: str, split: str) -> Path:
        return self.predictions_dir / f"{task}-{split}.csv"

    def outputs(self, task: str, split: str = "dev") -> Path:
        """Raw head outputs behind ``predictions(task, split)`` (for ranked errors)."""
        return self.predictions_dir / f"{task}-{split}-outputs.npy"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def summary(self) -> Path:
        return self.report_dir / "summary.md"

    def is_run(self) -> bool:
        return self.config.is_file()

    def run_files(self) -> list[Path]:
        """What of a run is here (a fresh run refuses such a folder unless told to replace
        it), with the temporary and set-aside copies of the atomic writes."""
        names = [self.config, self.log, self.metrics, self.final, self.augment]
        names += [self.best, self.last]
        names += [self.predictions_dir, self.report_dir]
        found = [p for p in names if p.exists()]
        hidden = [p for p in self.root.glob(".*") if p.name not in (".lock", ".write-test")]
        return found + sorted(p for p in hidden if p.name.endswith((".tmp", ".old")))

    def read_metrics(self) -> list[dict]:
        """The epoch records so far ([] before the first epoch ends); a bad line is an error
        naming file:line."""
        if not self.metrics.exists():
            return []
        records = []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunFileError(f"{self.metrics}:{line_no}: not a JSON record ({exc})") from None
            if not isinstance(record, dict) or "epoch" not in record:
                raise RunFileError(
                    f"{self.metrics}:{line_no}: expected an object with an 'epoch' key"
                )
            records.append(record)
        return records
