"""The interface every training objective implements, and the extra terms a task's loss adds.

An ``Objective`` is one named loss of a training step: where its batches come from
(``source``: the training stream it draws rows from) and ``loss(model, batch)``, which returns
the total the gradient strategy trains on plus named parts for the log. A ``Term`` is an extra
loss one task objective adds to its head loss (R-Drop, CoSENT, in-batch contrastive, SMART):
one file each, with its own config table and its own validation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from minbert.data.batching import Batch
from minbert.data.tasks import TaskSpec

Precision = Callable[[], AbstractContextManager]  # the run's autocast context, made anew per use


@dataclass
class Loss:
    """``total``: what the strategy trains on. ``parts``: named scalars for the log; ``"loss"``
    is the objective's own loss, other keys are its extra terms (weighted as in ``total``)."""

    total: Tensor
    parts: dict[str, Tensor]


class Objective:
    name: str = "base"
    source: str = ""  # the training stream (a task name) this objective's batches come from

    def prepare(self, batch: Batch) -> Batch:
        """The batch as the objective's forward wants it (R-Drop: every row twice)."""
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        raise NotImplementedError


class Term:
    """An extra term of a task's loss. ``Config`` is its table under ``objectives.<task>``.

    A term either owns the forward (``owns_forward``: it needs more than the head's outputs,
    and returns the outputs together with its weighted value) or is computed from the outputs
    and targets afterwards (``value``). ``active(config)`` says whether the table switches it on.
    """

    name: ClassVar[str] = "term"
    Config: ClassVar[type] = object
    owns_forward: ClassVar[bool] = False

    @staticmethod
    def active(config: Any) -> bool:
        return bool(getattr(config, "weight", 0.0))

    @staticmethod
    def check(config: Any, key: str, spec: TaskSpec, head: Any, full: Any) -> None:
        """Raise ConfigError (naming ``key``) when the term cannot apply to this task."""

    def prepare(self, batch: Batch) -> Batch:
        return batch

    def forward(self, model: nn.Module, task: str, batch: Batch) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError
