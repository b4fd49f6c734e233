"""R-Drop (Liang et al. 2021): each training batch goes through the model twice, with
independent dropout; the loss is the mean of the two task losses plus ``weight`` times
KL(p1 || p2) + KL(p2 || p1) (squared error for score tasks)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from minbert.data.batching import Batch
from minbert.objectives.base import Term
from minbert.objectives.smart import divergence
from minbert.settings import ConfigError, setting


@dataclass(frozen=True)
class RDropConfig:
    weight: float = setting(
        0.0, "weight of the consistency term between the two dropout passes (0: off)", min=0.0
    )


class RDrop(Term):
    name = "rdrop"
    Config = RDropConfig

    def __init__(self, config: RDropConfig, label_kind: str):
        self.weight = config.weight
        self.label_kind = label_kind

    @staticmethod
    def check(config, key, spec, head, full) -> None:
        if full.train.smart.enabled and spec.name in full.train.tasks:
            raise ConfigError(f"{key}.weight: not combined with train.smart.enabled")

    def prepare(self, batch: Batch) -> Batch:
        return batch.twice()

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        first, second = outputs.chunk(2)
        return self.weight * divergence(self.label_kind, first, second)
