"""Per-task gradients of the shared parameters as flat vectors.

PCGrad and the gradient-conflict analysis need each task's gradient on its own. They get it
from the step's single forward graph, backpropagating one task loss at a time
(``retain_graph``), and keep one flat fp32 row per task: memory grows by one copy of the
shared parameters per task, not by one graph per task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def flat_size(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def copy_into(row: Tensor, grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> None:
    """Write ``grads`` (one per parameter, None for unused) into the flat ``row``."""
    offset = 0
    for g, p in zip(grads, params, strict=True):
        n = p.numel()
        if g is None:
            row[offset : offset + n].zero_()
        else:
            row[offset : offset + n].copy_(g.reshape(-1))
        offset += n


def flat_gradient(
    loss: Tensor, params: Sequence[nn.Parameter], retain_graph: bool = True
) -> Tensor:
    """d loss / d params as one flat fp32 vector (zeros for unused parameters).

    Uses ``torch.autograd.grad``, so no ``.grad`` is touched: measuring does not change what
    the optimiser step will see.
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    row = torch.empty(flat_size(params), dtype=torch.float32, device=params[0].device)
    copy_into(row, grads, params)
    return row


def add_flat_to_grads(
    flat: Tensor, params: Sequence[nn.Parameter], which: Sequence[bool] | None = None
) -> None:
    """Add slices of ``flat`` to the ``.grad`` of ``params`` (only where ``which`` is True).

    A parameter left out keeps ``.grad = None``, so the optimiser skips it as it would have
    had the loss been backpropagated directly (an unused pooler is not decayed or moved).
    """
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if which is None or which[i]:
            g = flat[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n
