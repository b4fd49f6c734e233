import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from minbert.data.tasks import TASKS
from minbert.eval.metrics import accuracy, best_threshold, overall_scores, pearson
from minbert.objectives.task import task_loss


def test_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert np.isnan(pearson(np.ones(5), np.arange(5)))


def test_accuracy_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert accuracy(a, b) == pytest.approx(sklearn_metrics.accuracy_score(b, a))
    with pytest.raises(ValueError):
        accuracy(np.zeros(3), np.zeros(4))


def test_overall_scores_both_forms():
    metrics = {"sst": 0.5, "quora": 0.8, "sts": 0.6}
    names = {"sst": "accuracy", "quora": "accuracy", "sts": "pearson"}
    out = overall_scores(metrics, names)
    assert out["overall_mean"] == pytest.approx(1.9 / 3)
    assert out["overall_leaderboard"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)


def test_losses_match_torch():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    assert task_loss(TASKS["sst"], logits, labels) == pytest.approx(
        F.cross_entropy(logits, labels).item()
    )
    logit, binary = torch.randn(6), torch.randint(0, 2, (6,)).float()
    assert task_loss(TASKS["quora"], logit, binary) == pytest.approx(
        F.binary_cross_entropy_with_logits(logit, binary).item()
    )
    score, target = torch.rand(6), torch.rand(6)
    assert task_loss(TASKS["sts"], score, target) == pytest.approx(F.mse_loss(score, target).item())


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    logits = np.round(rng.normal(size=n), 1)  # rounding makes ties
    labels = (rng.random(n) < 1 / (1 + np.exp(-2 * logits))).astype(float)
    threshold, acc = best_threshold(logits, labels)
    assert acc == pytest.approx(np.mean((logits > threshold) == labels))
    cuts = np.concatenate([[logits.max() + 1], (np.sort(logits)[:-1] + np.sort(logits)[1:]) / 2])
    cuts = np.concatenate([cuts, [logits.min() - 1]])
    assert acc == pytest.approx(max(np.mean((logits > c) == labels) for c in cuts))


def test_best_threshold_separates_and_rejects_bad_shapes():
    threshold, acc = best_threshold(np.array([-3.0, -1.0, 2.0, 4.0]), np.array([0, 0, 1, 1]))
    assert acc == 1.0 and -1.0 < threshold < 2.0
    assert best_threshold(np.array([1.0, 2.0]), np.array([0.0, 0.0]))[1] == 1.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        best_threshold(np.array([]), np.array([]))
