"""The task registry: one ``TaskSpec`` per task says everything task-specific.

Files, columns, label parsing, output size, loss and metric all follow from a spec; the
trainer, evaluator and heads never name a task. Adding a task means adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LabelKind = Literal["class", "binary", "score"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    files: dict[str, str]  # split -> file name inside data.dir
    text_columns: tuple[str, ...]  # one column: single sentence; two: a pair
    label_column: str
    label_kind: LabelKind  # class: integer 0..num_classes-1; binary: 0/1; score: float range
    num_classes: int = 0  # for label_kind == "class"
    score_range: tuple[float, float] = (0.0, 1.0)  # for label_kind == "score"
    default_head: dict = field(default_factory=dict)  # HeadConfig fields
    symmetric: bool = False  # a pair task whose label stays when its sentences swap places

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: class logits, one binary logit, or one score."""
        return self.num_classes if self.label_kind == "class" else 1

    @property
    def metric(self) -> str:
        return "pearson" if self.label_kind == "score" else "accuracy"

    def parse_label(self, raw: str) -> float:
        """The label as a number; raises ValueError with a message a user can act on."""
        text = raw.strip()
        if self.label_kind == "class":
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a class number") from None
            if not value.is_integer() or not 0 <= value < self.num_classes:
                raise ValueError(f"{text!r} is not a class in 0..{self.num_classes - 1}")
            return int(value)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if self.label_kind == "binary":
            if value not in (0.0, 1.0):
                raise ValueError(f"{text!r} is not 0 or 1")
            return value
        low, high = self.score_range
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"{text!r} is outside [{low:g}, {high:g}]")
        return value


def _sentiment(name: str, prefix: str, classes: int, description: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        description=description,
        files={
            "train": f"{prefix}-train.csv",
            "dev": f"{prefix}-dev.csv",
            "test": f"{prefix}-test-student.csv",
        },
        text_columns=("sentence",),
        label_column="sentiment",
        label_kind="class",
        num_classes=classes,
        default_head={"pooling": "cls", "kind": "linear"},
    )


TASKS: dict[str, TaskSpec] = {
    "sst": _sentiment("sst", "ids-sst", 5, "Stanford Sentiment Treebank, 5 classes"),
    "cfimdb": _sentiment("cfimdb", "ids-cfimdb", 2, "IMDb movie reviews, positive/negative"),
    "quora": TaskSpec(
        name="quora",
        description="Quora question pairs: paraphrase or not",
        files={
            "train": "quora-train.csv",
            "dev": "quora-dev.csv",
            "test": "quora-test-student.csv",
        },
        text_columns=("sentence1", "sentence2"),
        label_column="is_duplicate",
        label_kind="binary",
        default_head={"pooling": "cls", "kind": "linear", "encoding": "cross"},
        symmetric=True,
    ),
    "sts": TaskSpec(
        name="sts",
        description="STS Benchmark: semantic similarity 0-5",
        files={"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
        text_columns=("sentence1", "sentence2"),
        label_column="similarity",
        label_kind="score",
        score_range=(0.0, 5.0),
        default_head={"pooling": "cls", "kind": "linear", "encoding": "cross"},
        symmetric=True,
    ),
}
