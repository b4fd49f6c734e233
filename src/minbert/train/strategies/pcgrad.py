"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Each task's gradient on the shared parameters is projected onto the normal plane of every
other task gradient it conflicts with (negative dot product), the other tasks taken in a
random order drawn every step, and the projected gradients are summed. Task heads keep their
own gradients. With one task in a step (round_robin, sequential) it is the plain sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minbert.train.gradients import add_flat_to_grads, copy_into, flat_size
from minbert.train.strategies.base import GradientStrategy, weighted_backward


def project_conflicting(grads: Tensor, i: int, order: list[int]) -> Tensor:
    """Task ``i``'s gradient (row of ``grads``, shape (T, P)) after PCGrad's projections.

    For each ``j`` in ``order``: if ``g . g_j < 0``, ``g -= (g . g_j) / |g_j|^2 g_j``. The
    projections are against the other tasks' original gradients, as in the paper's
    Algorithm 1. Written without a data-dependent branch (no device sync per pair).
    """
    g = grads[i].clone()
    for j in order:
        other = grads[j]
        dot = torch.dot(g, other)
        scale = dot.clamp(max=0.0) / torch.dot(other, other).clamp(min=1e-30)
        g -= scale * other
    return g


def pcgrad_sum(grads: Tensor, orders: list[list[int]]) -> Tensor:
    """Sum over tasks of the projected gradients; ``orders[i]`` lists the tasks other than
    ``i`` in the order task ``i`` is projected against them."""
    total = torch.zeros_like(grads[0])
    for i, order in enumerate(orders):
        total += project_conflicting(grads, i, order)
    return total


class PCGradStrategy(GradientStrategy):
    name = "pcgrad"

    def __init__(self, seed: int = 0):
        # Its own generator: the projection order does not shift the dropout or data RNGs,
        # and its state goes into state_dict for an exact resume.
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, train, model):
        return cls(train.seed)

    def backward(self, losses, shared_params):
        shared = list(shared_params)
        if len(losses) < 2 or not shared:
            weighted_backward(losses, dict.fromkeys(losses, 1.0))
            return dict.fromkeys(losses, 1.0)
        tasks = list(losses)
        earlier = [p.grad for p in shared]  # normally None: the trainer zeroes after each step
        for p in shared:
            p.grad = None
        grads = torch.empty(
            len(tasks), flat_size(shared), dtype=torch.float32, device=shared[0].device
        )
        used = [False] * len(shared)
        for i, task in enumerate(tasks):
            # A full backward: the head of this task gets its gradient in .grad as usual; the
            # shared gradient is moved into row i and cleared for the next task.
            losses[task].backward(retain_graph=i < len(tasks) - 1)
            copy_into(grads[i], [p.grad for p in shared], shared)
            for k, p in enumerate(shared):
                used[k] = used[k] or p.grad is not None
                p.grad = None
        for p, g in zip(shared, earlier, strict=True):
            p.grad = g
        # Under torchrun: the step's task gradients, each summed over the ranks, are
        # projected alike on every rank; each rank leaves 1/W of the result, as the trainer
        # sums the ranks' gradients afterwards.
        self.world.all_reduce_(grads)
        orders = [self._order(i, len(tasks)) for i in range(len(tasks))]
        add_flat_to_grads(pcgrad_sum(grads, orders) / self.world.size, shared, used)
        return dict.fromkeys(losses, 1.0)

    def _order(self, i: int, n: int) -> list[int]:
        return [j for j in torch.randperm(n, generator=self.generator).tolist() if j != i]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
