"""Gradient strategies: how the per-task losses of one step become gradients.

The trainer builds one with ``build_strategy(name, train_config, model)`` and calls
``strategy.backward(losses, shared_params)`` once per optimiser step (see
``base.GradientStrategy``). Each method is one class in its own module, registered here by
name; ``train.strategy`` in the config chooses one.
"""

from __future__ import annotations

from torch import nn

from minbert.config import TrainConfig
from minbert.train.distributed import ALONE, World
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
    name: str,
    train: TrainConfig | None = None,
    model: nn.Module | None = None,
    world: World = ALONE,
) -> GradientStrategy:
    """The strategy registered as ``name``, set up from ``train`` (its tasks, weights and
    settings) and, for strategies that look at particular layers, ``model``; under
    torchrun, ``world`` is how it sums what it measures over the ranks."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown gradient strategy {name!r}; known: {sorted(STRATEGIES)}")
    strategy = STRATEGIES[name].from_config(train or TrainConfig(), model)
    strategy.world = world
    return strategy


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
