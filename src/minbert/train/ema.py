"""An exponential moving average (EMA) of the trained weights, evaluated in their place.

Fine-tuning on small data is noisy from step to step: the dev score of the weights after the
last step depends on the last few batches. The average of the recent weights (Polyak-Ruppert
averaging with exponential forgetting) is a smoother model at the cost of one copy of the
weights and one ``lerp`` per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """``average <- d * average + (1 - d) * weights`` after every optimiser step.

    The decay starts small and grows to ``decay``, ``d_n = min(decay, (1 + n) / (10 + n))``
    after n updates (as TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so
    that the average of a short run is not mostly the pretrained starting point.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own ones after."""
        with torch.no_grad():
            self._swap()
            try:
                yield
            finally:
                self._swap()

    def _swap(self) -> None:
        for p, a in zip(self.params, self.average, strict=True):
            held = p.detach().clone()
            p.copy_(a)
            a.copy_(held)

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "average": dict(zip(self.names, self.average, strict=True)),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state["average"]
        if sorted(saved) != sorted(self.names):
            raise ValueError("the saved weight average does not cover this model's parameters")
        with torch.no_grad():
            for name, a in zip(self.names, self.average, strict=True):
                a.copy_(saved[name])
        self.updates = int(state["updates"])
