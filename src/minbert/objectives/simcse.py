"""SimCSE (Gao, Yao & Chen 2021): contrastive learning of sentence embeddings.

Unsupervised, the positive of a sentence is the same sentence encoded again (another dropout
mask); supervised, a labelled pair's second sentence, with an optional hard negative per
anchor. Every other positive (and hard negative) of the batch is a negative. This file holds
the loss; the pre-training objective around it is issue 19's next step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def simcse_loss(
    anchors: Tensor,
    positives: Tensor,
    temperature: float = 0.05,
    hard_negatives: Tensor | None = None,
    hard_negative_weight: float = 0.0,
    symmetric: bool = False,
) -> Tensor:
    """Mean over the batch of ``-log softmax`` of each anchor's own positive among the
    batch's positives (and hard negatives), on ``cos / temperature``.

    ``anchors``, ``positives``, ``hard_negatives``: (B, H). ``hard_negative_weight`` is added
    to the logit of each anchor's own hard negative alone, as SimCSE's code does (0, its
    default, leaves them as plain negatives). ``symmetric`` averages in the other direction:
    each positive picks its anchor among the batch's anchors.
    """
    a = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    logits = a @ p.T / temperature  # (B, B): anchor i against positive j
    targets = torch.arange(len(a), device=a.device)
    if hard_negatives is not None:
        n = F.normalize(hard_negatives.float(), dim=-1)
        against_hard = a @ n.T / temperature  # (B, B): anchor i against hard negative j
        if hard_negative_weight:
            against_hard = against_hard + hard_negative_weight * torch.eye(len(a), device=a.device)
        logits = torch.cat([logits, against_hard], dim=1)  # (B, 2B)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = (loss + F.cross_entropy(p @ a.T / temperature, targets)) / 2
    return loss
