"""Task losses as pure functions of head outputs and targets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from minbert.data.tasks import TaskSpec


def task_loss(spec: TaskSpec, outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for classes, BCE with logits for binary labels, MSE for scores."""
    outputs = outputs.float()  # losses in fp32 even under bf16 autocast
    if spec.label_kind == "class":
        return F.cross_entropy(outputs, targets.long())
    if spec.label_kind == "binary":
        return F.binary_cross_entropy_with_logits(outputs, targets.float())
    return F.mse_loss(outputs, targets.float())
