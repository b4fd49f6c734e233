"""Fixed task weights: the plain sum, or per-task weights from the config."""

from __future__ import annotations

from minbert.train.strategies.base import GradientStrategy, weighted_backward


class SumStrategy(GradientStrategy):
    """Plain sum of the task losses."""

    name = "sum"

    def backward(self, losses, shared_params):
        weighted_backward(losses, dict.fromkeys(losses, 1.0))
        return dict.fromkeys(losses, 1.0)


class WeightedStrategy(GradientStrategy):
    """Static per-task weights from config (tasks not named weigh 1)."""

    name = "weighted"

    def __init__(self, weights: dict[str, float]):
        self.weights = dict(weights)

    @classmethod
    def from_config(cls, train, model):
        return cls(train.task_weights)

    def backward(self, losses, shared_params):
        used = {t: self.weights.get(t, 1.0) for t in losses}
        weighted_backward(losses, used)
        return used
