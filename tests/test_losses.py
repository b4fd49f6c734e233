"""The task losses and the auxiliary ones against plain per-row computations."""

from __future__ import annotations

import math

import pytest
import torch

from minbert.config import ConfigError, load_config
from minbert.data.tasks import TASKS
from minbert.objectives.contrastive import in_batch_contrastive
from minbert.objectives.cosent import cosent
from minbert.objectives.task import ordinal_targets, task_loss


def _reference(u, v, labels, scale):
    """Row by row: for a positive pair i, -log softmax_j(scale cos(a_i, b_j))[i], both ways."""
    terms = []
    for i in range(len(labels)):
        if labels[i] < 0.5:
            continue
        for x, y in ((u, v), (v, u)):
            logits = [scale * torch.cosine_similarity(x[i], y[j], dim=0) for j in range(len(y))]
            logits = torch.stack(logits)
            terms.append(-(logits[i] - torch.logsumexp(logits, 0)))
    return torch.stack(terms).mean()


def test_contrastive_matches_the_per_row_definition():
    torch.manual_seed(0)
    u, v = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    got = in_batch_contrastive(u, v, labels, scale=7.0)
    torch.testing.assert_close(got.double(), _reference(u, v, labels, 7.0), rtol=1e-5, atol=1e-6)


def test_contrastive_is_zero_without_positives_and_rewards_aligned_pairs():
    u = torch.randn(4, 3)
    assert in_batch_contrastive(u, torch.randn(4, 3), torch.zeros(4), 20.0).item() == 0.0
    labels = torch.ones(4)
    aligned = in_batch_contrastive(u, u.clone(), labels, 20.0)
    shuffled = in_batch_contrastive(u, u[[1, 2, 3, 0]], labels, 20.0)
    assert aligned < shuffled
    assert aligned.item() < math.log(4)  # better than a uniform guess among 4


def test_contrastive_needs_a_bi_encoded_binary_task():
    load_config(None, ["heads.quora.encoding=bi", "heads.quora.contrastive=0.5"])
    with pytest.raises(
        ConfigError, match="objectives.quora.contrastive.weight: needs a bi-encoded"
    ):
        load_config(None, ["heads.quora.encoding=cross", "heads.quora.contrastive=0.5"])
    with pytest.raises(
        ConfigError, match="objectives.sts.contrastive.weight: needs a bi-encoded binary"
    ):
        load_config(None, ["heads.sts.encoding=bi", "heads.sts.contrastive=0.5"])


def test_cosent_matches_the_pairwise_definition():
    torch.manual_seed(1)
    scores, targets = (
        torch.rand(7, dtype=torch.float64),
        torch.tensor([0.1, 0.5, 0.5, 0.9, 0, 1, 0.3]),
    )
    total = 1.0
    for i in range(7):
        for j in range(7):
            if targets[i] > targets[j]:
                total += math.exp(20.0 * (scores[j] - scores[i]))
    assert cosent(scores, targets, 20.0).item() == pytest.approx(math.log(total), rel=1e-6)
    ranked = cosent(targets.clone(), targets, 20.0)  # scores in the targets' order
    assert ranked < cosent(1 - targets, targets, 20.0)
    assert cosent(torch.zeros(3), torch.ones(3), 20.0).item() == 0.0  # no ordered pair


def test_cosent_needs_a_score_task():
    load_config(None, ["heads.sts.cosent=1"])
    with pytest.raises(ConfigError, match="objectives.quora.cosent.weight: only score tasks"):
        load_config(None, ["heads.quora.cosent=1"])


def test_label_smoothing_matches_the_mixed_target_cross_entropy():
    torch.manual_seed(2)
    logits, targets = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 3, 4, 1])
    spec = TASKS["sst"]
    log_p = torch.log_softmax(logits, -1)
    mixed = 0.9 * torch.nn.functional.one_hot(targets, 5) + 0.1 / 5
    expected = -(mixed * log_p).sum(-1).mean()
    torch.testing.assert_close(task_loss(spec, logits, targets, 0.1), expected)
    plain = -log_p[torch.arange(4), targets].mean()
    torch.testing.assert_close(task_loss(spec, logits, targets), plain)


def test_label_smoothing_needs_a_multi_class_task():
    load_config(None, ["heads.sst.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="objectives.quora.label_smoothing: only multi-class"):
        load_config(None, ["heads.quora.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="objectives.sst.label_smoothing"):
        load_config(None, ["heads.sst.label_smoothing=0.7"])


def test_ordinal_targets_put_the_mass_near_the_gold_class():
    q = ordinal_targets(torch.tensor([0, 2]), 5, 0.5)
    torch.testing.assert_close(q.sum(-1), torch.ones(2))
    weights = torch.exp(-torch.tensor([0.0, 1, 4, 9, 16]) / 0.5)
    torch.testing.assert_close(q[0], weights / weights.sum())
    assert q[1].argmax() == 2 and q[1, 1] == q[1, 3] and q[1, 1] > q[1, 0]  # symmetric
    torch.manual_seed(3)
    logits, targets = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 3, 4, 1])
    soft = ordinal_targets(targets, 5, 1.0).double()
    expected = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    got = task_loss(TASKS["sst"], logits, targets, ordinal_width=1.0)
    torch.testing.assert_close(got, expected)
    # a near-zero width is the one-hot cross-entropy
    torch.testing.assert_close(
        task_loss(TASKS["sst"], logits, targets, ordinal_width=1e-3),
        task_loss(TASKS["sst"], logits, targets),
    )


def test_ordinal_width_needs_a_multi_class_task():
    load_config(None, ["heads.sst.ordinal_width=0.5"])
    with pytest.raises(ConfigError, match="objectives.sts.ordinal_width: only multi-class"):
        load_config(None, ["heads.sts.ordinal_width=0.5"])
