"""Weight averaging (``train.ema_decay``): the average is updated after every optimiser step
and swapped in for dev scoring, calibration and the saved best model (train/ema.py)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch import nn

from minbert.train.callbacks.base import Callback
from minbert.train.ema import WeightAverage


class AverageWeights(Callback):
    name = "average"

    def __init__(self, model: nn.Module, decay: float):
        self.average = WeightAverage(model, decay)

    def on_optimizer_step(self, trainer, weights: dict[str, float]) -> None:
        self.average.update()

    def evaluated_weights(self) -> AbstractContextManager:
        return self.average.swapped_in()

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
