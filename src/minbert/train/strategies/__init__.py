"""Gradient strategies: how the per-task losses of one step become gradients.

The trainer builds one with ``build_strategy(name, train_config, model)`` and calls
``strategy.backward(losses, shared_params)`` once per optimiser step (see
``base.GradientStrategy``). Each method is one class in its own module, registered here by
name; ``train.strategy`` in the config chooses one.
"""

from __future__ import annotations

from torch import nn

from minbert.config import TrainConfig
from minbert.train.strategies.base import GradientStrategy
from minbert.train.strategies.gradnorm import GradNormStrategy
from minbert.train.strategies.pcgrad import PCGradStrategy
from minbert.train.strategies.static import SumStrategy, WeightedStrategy
from minbert.train.strategies.uncertainty import UncertaintyStrategy

STRATEGIES: dict[str, type[GradientStrategy]] = {
    cls.name: cls
    for cls in (
        SumStrategy,
        WeightedStrategy,
        PCGradStrategy,
        GradNormStrategy,
        UncertaintyStrategy,
    )
}


def build_strategy(
    name: str, train: TrainConfig | None = None, model: nn.Module | None = None
) -> GradientStrategy:
    """The strategy registered as ``name``, set up from ``train`` (its tasks, weights and
    settings) and, for strategies that look at particular layers, ``model``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown gradient strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name].from_config(train or TrainConfig(), model)


__all__ = [
    "STRATEGIES",
    "GradNormStrategy",
    "GradientStrategy",
    "PCGradStrategy",
    "SumStrategy",
    "UncertaintyStrategy",
    "WeightedStrategy",
    "build_strategy",
]
