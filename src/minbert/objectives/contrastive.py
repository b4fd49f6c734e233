"""In-batch contrastive loss on a bi-encoded binary pair task's positive pairs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.data.batching import Batch
from minbert.objectives.base import Term
from minbert.settings import ConfigError, setting


def in_batch_contrastive(u: Tensor, v: Tensor, labels: Tensor, scale: float) -> Tensor:
    """Multiple-negatives ranking loss (Henderson et al. 2017) on the positive pairs of a batch.

    Each positive pair's first embedding must pick its own partner among all the batch's
    second embeddings (the negatives' included: they are hard negatives), and the other way
    round; cross-entropy over ``scale * cos``. This is the loss all-MiniLM-L6-v2 was trained
    with, so it keeps the embedding geometry the bi-encoder heads start from. 0 when the batch
    has no positive pair.
    """
    positive = labels > 0.5  # (B,)
    if not positive.any():
        return u.new_zeros((), dtype=torch.float32)
    u = F.normalize(u.float(), dim=-1)
    v = F.normalize(v.float(), dim=-1)
    target = positive.nonzero().squeeze(-1)  # (P,) row of each positive pair
    forward = scale * u[positive] @ v.T  # (P, B)
    backward = scale * v[positive] @ u.T  # (P, B)
    return (F.cross_entropy(forward, target) + F.cross_entropy(backward, target)) / 2


@dataclass(frozen=True)
class ContrastiveConfig:
    weight: float = setting(
        0.0,
        "weight of an in-batch contrastive loss on the positive pairs' embeddings (each b "
        "among the batch's sentences; 0: off)",
        min=0.0,
    )
    scale: float = setting(
        20.0, "temperature inverse of the contrastive loss: logits are scale * cos", min=0.0
    )


class Contrastive(Term):
    name = "contrastive"
    Config = ContrastiveConfig
    owns_forward = True  # it needs the sentence embeddings, not only the head's outputs

    def __init__(self, config: ContrastiveConfig, label_kind: str):
        self.weight, self.scale = config.weight, config.scale

    @staticmethod
    def check(config, key, spec, head, full) -> None:
        if not (spec.is_pair and head.encoding == "bi" and spec.label_kind == "binary"):
            raise ConfigError(
                f"{key}.weight: needs a bi-encoded binary pair task "
                f"(set heads.{spec.name}.encoding = 'bi')"
            )
        if full.train.smart.enabled and spec.name in full.train.tasks:
            raise ConfigError(f"{key}.weight: not combined with train.smart.enabled")
        if full.objective(spec.name).rdrop.weight:
            raise ConfigError(
                f"objectives.{spec.name}.rdrop.weight: not combined with {key} (a row's "
                "second copy would be one of its in-batch negatives)"
            )

    def forward(self, model: nn.Module, task: str, batch: Batch) -> tuple[Tensor, Tensor]:
        outputs, u, v = model.forward_embedded(task, batch)
        return outputs, self.weight * in_batch_contrastive(u, v, batch.labels, self.scale)
