"""Task losses as pure functions of head outputs and targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from minbert.data.tasks import TaskSpec


def task_loss(
    spec: TaskSpec,
    outputs: Tensor,
    targets: Tensor,
    label_smoothing: float = 0.0,
    ordinal_width: float = 0.0,
) -> Tensor:
    """Cross-entropy for classes (``label_smoothing`` of the target's mass spread evenly over
    the classes, Szegedy et al. 2016; soft ordinal targets when ``ordinal_width`` > 0), BCE
    with logits for binary labels, MSE for scores."""
    outputs = outputs.float()  # losses in fp32 even under bf16 autocast
    if spec.label_kind == "class":
        target = targets.long()
        if ordinal_width:
            target = ordinal_targets(target, spec.num_classes, ordinal_width)
        return F.cross_entropy(outputs, target, label_smoothing=label_smoothing)
    if spec.label_kind == "binary":
        return F.binary_cross_entropy_with_logits(outputs, targets.float())
    return F.mse_loss(outputs, targets.float())


def ordinal_targets(targets: Tensor, num_classes: int, width: float) -> Tensor:
    """Soft labels for ordered classes (SORD, Diaz & Marathe 2019): ``q_c`` proportional to
    ``exp(-(c - y)^2 / width)``. Calling "negative" "very negative" is a smaller error than
    calling it "positive", and one-hot targets say they are equally wrong."""
    classes = torch.arange(num_classes, device=targets.device, dtype=torch.float32)
    distance = (classes[None, :] - targets.float()[:, None]) ** 2  # (B, classes)
    return torch.softmax(-distance / width, dim=-1)


def in_batch_contrastive(u: Tensor, v: Tensor, labels: Tensor, scale: float) -> Tensor:
    """Multiple-negatives ranking loss (Henderson et al. 2017) on the positive pairs of a batch.

    Each positive pair's first embedding must pick its own partner among all the batch's
    second embeddings (the negatives' included: they are hard negatives), and the other way
    round; cross-entropy over ``scale * cos``. This is the loss all-MiniLM-L6-v2 was trained
    with, so it keeps the embedding geometry the bi-encoder heads start from. 0 when the batch
    has no positive pair.
    """
    positive = labels > 0.5  # (B,)
    if not positive.any():
        return u.new_zeros((), dtype=torch.float32)
    u = F.normalize(u.float(), dim=-1)
    v = F.normalize(v.float(), dim=-1)
    target = positive.nonzero().squeeze(-1)  # (P,) row of each positive pair
    forward = scale * u[positive] @ v.T  # (P, B)
    backward = scale * v[positive] @ u.T  # (P, B)
    return (F.cross_entropy(forward, target) + F.cross_entropy(backward, target)) / 2


def cosent(scores: Tensor, targets: Tensor, scale: float) -> Tensor:
    """CoSENT ranking loss (Su 2022): ``log(1 + sum over pairs with t_i > t_j of
    exp(scale * (s_j - s_i)))``. It only asks that a more similar pair scores higher, which
    is what Pearson and Spearman reward, and leaves the scale of the scores to the MSE term."""
    s = scale * scores.float().reshape(-1)
    t = targets.float().reshape(-1)
    wrong_way = s[None, :] - s[:, None]  # (B, B): s_j - s_i
    ordered = t[:, None] > t[None, :]  # (B, B): t_i > t_j
    terms = torch.cat([s.new_zeros(1), wrong_way[ordered]])
    return torch.logsumexp(terms, dim=0)
