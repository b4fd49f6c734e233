"""The SimCSE loss against its formula written out row by row (tiny tensors, float64)."""

import math

import pytest
import torch

from minbert.objectives.simcse import simcse_loss


def cos(u, v) -> float:
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def by_the_formula(a, p, t, n=None, w=0.0, symmetric=False) -> float:
    """l_i = -log( e^{cos(a_i, p_i)/t} / (sum_j e^{cos(a_i, p_j)/t} + sum_j e^{cos(a_i, n_j)/t + w[i=j]}) )."""
    b = len(a)
    total = 0.0
    for i in range(b):
        terms = [math.exp(cos(a[i], p[j]) / t) for j in range(b)]
        if n is not None:
            terms += [math.exp(cos(a[i], n[j]) / t + (w if i == j else 0.0)) for j in range(b)]
        total += -math.log(math.exp(cos(a[i], p[i]) / t) / sum(terms))
    loss = total / b
    if symmetric:
        back = 0.0
        for i in range(b):
            terms = [math.exp(cos(p[i], a[j]) / t) for j in range(b)]
            back += -math.log(math.exp(cos(p[i], a[i]) / t) / sum(terms))
        loss = (loss + back / b) / 2
    return loss


@pytest.mark.parametrize("t", [0.05, 1.0])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("w", [0.0, 0.7])
@pytest.mark.parametrize("symmetric", [False, True])
def test_the_loss_is_the_formula(t, hard, w, symmetric):
    g = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    got = simcse_loss(a, p, t, n if hard else None, w, symmetric).item()
    expected = by_the_formula(a, p, t, n if hard else None, w if hard else 0.0, symmetric)
    assert got == pytest.approx(expected, rel=1e-5)


def test_a_perfect_batch_has_a_small_loss_and_gradients_flow():
    a = torch.eye(4, requires_grad=True)
    loss = simcse_loss(a, torch.eye(4), 0.05)
    assert loss.item() < 1e-6  # each anchor's positive is the only one at cos 1
    scrambled = simcse_loss(a, torch.eye(4)[[1, 2, 3, 0]], 0.05)
    assert scrambled.item() > 10
    scrambled.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
