"""The interface every training objective implements, and the extra terms a task's loss adds.

An ``Objective`` is one named loss of a training step: where its batches come from
(``source``: the training stream it draws rows from) and ``loss(model, batch)``, which returns
the total the gradient strategy trains on plus named parts for the log. A ``Term`` is an extra
loss one task objective adds to its head loss (R-Drop, CoSENT, in-batch contrastive, SMART):
one file each, with its own config table and its own validation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
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

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step."""

    def dev_metrics(self, model: nn.Module, device, bf16: bool) -> dict[str, float]:
        """Metrics of this objective's own held-out data, scored after each epoch."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PretrainObjective(Objective):
    """An objective that reads text rather than a task's labelled rows (MLM, SimCSE): its own
    stream (``stream``), its own head (``model.objective_heads[name]``, built by
    ``build_head``), its loss weight (``config.weight``) and, beside tasks, its share of the
    steps (``config.share``). For its first ``warmup`` steps only its head trains: the encoder
    runs without gradients (a head that starts from random weights must not push the encoder
    meanwhile)."""

    Config: ClassVar[type] = object

    @staticmethod
    def build_head(config: Any, encoder: nn.Module) -> nn.Module | None:
        return None

    def __init__(self, config: Any, precision: Precision, warmup: int = 0):
        self.source = self.name
        self.config, self.precision, self.warmup = config, precision, warmup
        self.steps = 0  # optimiser steps this objective took part in
        self._took_part = False

    @property
    def warming_up(self) -> bool:
        return self.steps < self.warmup

    def encoder_context(self) -> ExitStack:
        """Around the encoder's forward: the run's precision, and no gradients in warm-up."""
        self._took_part = True
        stack = ExitStack()
        stack.enter_context(self.precision())
        if self.warming_up:
            stack.enter_context(torch.no_grad())
        return stack

    def weighted(self, value: Tensor) -> Loss:
        return Loss(self.config.weight * value, {"loss": value})

    def after_step(self, model: nn.Module) -> None:
        self.steps += self._took_part
        self._took_part = False

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))


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
