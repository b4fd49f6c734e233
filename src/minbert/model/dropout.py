"""Dropout with a cheaper random mask on the CPU.

``torch.nn.Dropout`` on the CPU draws one Bernoulli variate per element, and that draw was
12% of a training step here (``docs/PERFORMANCE.md``). This module draws 64 random bits per
four elements instead and keeps an element when its 16 bits clear a threshold, so the keep
probability is ``round((1 - p) * 65536) / 65536`` (within 1e-5 of ``1 - p``); kept values
are scaled by ``1 / (1 - p)`` as usual. The bits come from torch's default generator, so
``torch.manual_seed`` and the saved RNG state govern them as they govern ``nn.Dropout``.
On CUDA, where the Bernoulli draw is fast, it is ``nn.Dropout`` exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 16
_LEVELS = 1 << _BITS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A bool mask of ``shape``, each element True with probability ~``1 - p``, independently."""
    numel = shape.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # 2^64 - 1 values: uniform to 5e-20
    # As int16 each 16-bit chunk is uniform on [-32768, 32767]; drop the smallest p of them.
    threshold = round(p * _LEVELS) - _LEVELS // 2
    return (words.view(torch.int16)[:numel] >= threshold).view(shape)


def dropout(x: Tensor, p: float, training: bool, fast_mask: bool = True) -> Tensor:
    if not training or p == 0.0:
        return x
    if not fast_mask or x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    return torch.where(keep_mask(x.shape, p, x.device), x * (1.0 / (1.0 - p)), 0.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the cheaper CPU mask of this module (same ``p``, same state dict).
    ``fast_mask = False`` draws torch's own mask (the benchmark's ablation switches it)."""

    fast_mask = True

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.fast_mask)
