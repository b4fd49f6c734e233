"""The interface every gradient strategy implements."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from minbert.config import TrainConfig
from minbert.train.distributed import ALONE, World


class GradientStrategy:
    """Turns the per-task losses of one optimiser step into gradients in ``.grad``.

    The trainer calls ``backward(losses, shared_params)`` once per step with one scalar loss
    per task in the step (one task under the round_robin and sequential schedules, every task
    under interleaved) and the trainable shared (encoder) parameters. The strategy leaves the
    gradient of every trained parameter in ``.grad`` and returns the weight it gave each task
    of ``losses``, for the log. Task heads are not shared, so their gradients are their own
    task's whatever the strategy does to the shared ones.

    A strategy that learns (task weights, log-variances) keeps everything it needs to go on
    in ``state_dict()`` — tensors, numbers, strings, dicts and lists only — so the trainer can
    save it for an exact resume. Its own parameters are trained by its own optimiser inside
    ``backward``: they are not model parameters, are not clipped with them, and are not saved
    with the model.

    Under torchrun each rank's losses are its rows' share of the step's (they sum to the
    step's losses), and the trainer sums every rank's ``.grad`` after ``backward``. A
    strategy that is not linear in the losses sums what it measures (per-task gradients,
    loss values) over the ranks with ``self.world`` before it uses it.
    """

    name = "base"
    weights_change = False  # True: the weights move during training; the trainer logs them
    world: World = ALONE

    @classmethod
    def from_config(cls, train: TrainConfig, model: nn.Module | None) -> GradientStrategy:
        return cls()

    def backward(
        self, losses: dict[str, Tensor], shared_params: Sequence[nn.Parameter]
    ) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def weighted_backward(losses: dict[str, Tensor], weights: dict[str, float | Tensor]) -> None:
    """Backpropagate ``sum_t weights[t] * losses[t]`` in one pass."""
    total = torch.stack([weights[t] * loss for t, loss in losses.items()]).sum()
    total.backward()
