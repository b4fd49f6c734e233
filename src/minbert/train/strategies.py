"""Gradient strategies: how the per-task losses of one step become gradients.

The trainer calls ``strategy.backward(losses, shared_params)`` once per optimiser step with
one loss per task in the step; the strategy leaves gradients in ``.grad`` and returns the
task weights it used (for the log). New methods (PCGrad, GradNorm, ...) are one class each,
registered by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class GradientStrategy:
    name = "base"

    def backward(
        self, losses: dict[str, Tensor], shared_params: Sequence[nn.Parameter]
    ) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SumStrategy(GradientStrategy):
    """Plain sum of the task losses."""

    name = "sum"

    def backward(self, losses, shared_params):
        _weighted_backward(losses, dict.fromkeys(losses, 1.0))
        return dict.fromkeys(losses, 1.0)


class WeightedStrategy(GradientStrategy):
    """Static per-task weights from config (tasks not named weigh 1)."""

    name = "weighted"

    def __init__(self, weights: dict[str, float]):
        self.weights = dict(weights)

    def backward(self, losses, shared_params):
        used = {t: self.weights.get(t, 1.0) for t in losses}
        _weighted_backward(losses, used)
        return used


def _weighted_backward(losses: dict[str, Tensor], weights: dict[str, float]) -> None:
    total = torch.stack([weights[t] * loss for t, loss in losses.items()]).sum()
    total.backward()


STRATEGIES = {"sum": SumStrategy, "weighted": WeightedStrategy}


def build_strategy(name: str, task_weights: dict[str, float] | None = None) -> GradientStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown gradient strategy {name!r}; known: {sorted(STRATEGIES)}")
    if name == "weighted":
        return WeightedStrategy(task_weights or {})
    return STRATEGIES[name]()
