"""CoSENT ranking loss (Su 2022) on a score task's batch, added to its MSE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minbert.objectives.base import Term
from minbert.settings import ConfigError, setting


def cosent(scores: Tensor, targets: Tensor, scale: float) -> Tensor:
    """``log(1 + sum over pairs with t_i > t_j of exp(scale * (s_j - s_i)))``. It only asks
    that a more similar pair scores higher, which is what Pearson and Spearman reward, and
    leaves the scale of the scores to the MSE term."""
    s = scale * scores.float().reshape(-1)
    t = targets.float().reshape(-1)
    wrong_way = s[None, :] - s[:, None]  # (B, B): s_j - s_i
    ordered = t[:, None] > t[None, :]  # (B, B): t_i > t_j
    terms = torch.cat([s.new_zeros(1), wrong_way[ordered]])
    return torch.logsumexp(terms, dim=0)


@dataclass(frozen=True)
class CosentConfig:
    weight: float = setting(0.0, "weight of the CoSENT term (0: off)", min=0.0)
    scale: float = setting(20.0, "scale of the score differences", min=0.0)


class Cosent(Term):
    name = "cosent"
    Config = CosentConfig

    def __init__(self, config: CosentConfig, label_kind: str):
        self.weight, self.scale = config.weight, config.scale

    @staticmethod
    def check(config, key, spec, head, full) -> None:
        if spec.label_kind != "score":
            raise ConfigError(f"{key}.weight: only score tasks are ranked")

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.weight * cosent(outputs, targets, self.scale)
