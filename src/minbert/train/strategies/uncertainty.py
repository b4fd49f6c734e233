"""Uncertainty weighting (Kendall, Gal & Cipolla 2018).

Each task has a learned log-variance ``s_t = log sigma_t^2`` and the model is trained on
``sum_t exp(-s_t) L_t + s_t``: a task with a large (noisy, hard) loss is down-weighted, and
the ``+ s_t`` term stops the variance from growing without bound (at the optimum
``exp(s_t) = L_t``). This is the common form for all task kinds (the paper's 1/2 for
regression is dropped), so every weight starts at 1, like ``sum``.

The log-variances are trained by the strategy's own AdamW (``train.uncertainty.lr``, no
decay) inside ``backward``, not by the model's optimiser: they are not model weights, should
not share its warm-up, decay or clipping, and must not end up in exported checkpoints. They
live in ``state_dict()`` for resuming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minbert.train.optim import AdamW
from minbert.train.strategies.base import GradientStrategy


class UncertaintyStrategy(GradientStrategy):
    name = "uncertainty"
    weights_change = True

    def __init__(self, tasks: Sequence[str], lr: float):
        # One scalar per task: absent tasks get no gradient and are left alone by AdamW.
        self.log_vars = {t: nn.Parameter(torch.zeros(())) for t in tasks}
        self.optimizer = AdamW(list(self.log_vars.values()), lr=lr, weight_decay=0.0)

    @classmethod
    def from_config(cls, train, model):
        return cls(train.tasks, train.uncertainty.lr)

    def backward(self, losses, shared_params):
        used = {t: torch.exp(-self.log_vars[t]).item() for t in losses}
        terms = []
        for t, loss in losses.items():
            s = self.log_vars[t].to(
                loss.device
            )  # the parameter stays on the CPU; .to is differentiable
            # Under torchrun each rank's loss is its share; the + s term is counted once in all.
            terms.append(torch.exp(-s) * loss + s / self.world.size)
        total = torch.stack(terms).sum()
        total.backward()
        for t in losses:
            self.world.all_reduce_(self.log_vars[t].grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return used

    def current_weights(self) -> dict[str, float]:
        return {t: torch.exp(-s).item() for t, s in self.log_vars.items()}

    def state_dict(self) -> dict:
        return {
            "log_vars": {t: s.detach().clone() for t, s in self.log_vars.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for t, value in state["log_vars"].items():
                self.log_vars[t].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
