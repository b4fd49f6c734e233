import math

import pytest
import torch
from torch import nn

from minbert.train.optim import AdamW, lr_lambda, no_decay, parameter_groups


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(8, 16)
        self.LayerNorm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.LayerNorm(self.dense(x))))


def _train(optimizer_cls, steps=1000):
    torch.manual_seed(0)
    model = _Small().double()
    data = torch.randn(steps, 4, 8, dtype=torch.float64)
    targets = torch.randint(0, 3, (steps, 4))
    optimizer = optimizer_cls(
        parameter_groups(model, 0.05), lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05
    )
    for x, y in zip(data, targets, strict=True):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_adamw_matches_torch_over_1000_steps():
    ours = _train(AdamW)
    theirs = _train(lambda *a, **k: torch.optim.AdamW(*a, **k, foreach=False))
    worst = max(
        (p - q).abs().max().item()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True)
    )
    assert worst <= 1e-6, worst
    # and the parameters did move: the comparison is not vacuous
    assert (ours.dense.weight - _Small().double().dense.weight).abs().max() > 0.01


def test_compiled_adamw_matches_torch(caplog):
    """The torch.compile'd update (the CPU default of the trainer) is the same arithmetic."""
    ours = _train(lambda *a, **k: AdamW(*a, **k, compiled=True), steps=300)
    theirs = _train(lambda *a, **k: torch.optim.AdamW(*a, **k, foreach=False), steps=300)
    assert "compiled AdamW update failed" not in caplog.text  # it did run compiled
    worst = max(
        (p - q).abs().max().item()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True)
    )
    assert worst <= 1e-6, worst


def test_no_decay_for_biases_and_layernorm():
    groups = parameter_groups(_Small(), 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    model = _Small()
    names = {n for n, _ in model.named_parameters() if no_decay(n)}
    assert names == {"dense.bias", "LayerNorm.weight", "LayerNorm.bias", "out.bias"}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert len(decayed) == 2


def test_groups_can_take_their_own_lr():
    groups = parameter_groups(_Small(), 0.1, lambda name: 1e-3 if name.startswith("out.") else None)
    by_lr = {(g["weight_decay"], g.get("lr")): len(g["params"]) for g in groups}
    assert by_lr == {(0.1, None): 1, (0.0, None): 3, (0.1, 1e-3): 1, (0.0, 1e-3): 1}


def test_weight_decay_is_decoupled():
    """With zero gradient, AdamW only shrinks weights by lr * wd (no Adam term)."""
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.data, torch.full((3,), 0.95, dtype=torch.float64))


def test_bad_hyperparameters_are_rejected():
    p = [nn.Parameter(torch.ones(1))]
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        AdamW(p, lr=-1)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_warm_up_then_decay_to_zero(kind):
    f = lr_lambda(kind, total_steps=100, warmup_steps=10)
    warm = [f(s) for s in range(10)]
    assert warm == sorted(warm) and warm[-1] < 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    decay = [f(s) for s in range(10, 101)]
    assert decay == sorted(decay, reverse=True)
    if kind == "cosine":
        assert f(30) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))


def test_constant_schedule_and_unknown():
    assert lr_lambda("constant", 100, 0)(70) == 1.0
    with pytest.raises(ValueError, match="cosine"):
        lr_lambda("step", 10, 0)
