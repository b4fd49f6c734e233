"""Gradient strategies on hand-built gradients and toy problems (no model, milliseconds)."""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

from minbert.config import ConfigError, TrainConfig, load_config
from minbert.train.state import load_state, save_state
from minbert.train.strategies import (
    STRATEGIES,
    GradNormStrategy,
    PCGradStrategy,
    UncertaintyStrategy,
    build_strategy,
)
from minbert.train.strategies.gradnorm import layer_parameters
from minbert.train.strategies.pcgrad import pcgrad_sum, project_conflicting


def _linear_losses(shared: nn.Parameter, grads: dict[str, list[float]], heads=None):
    """Losses whose gradient on ``shared`` is exactly ``grads[task]`` (plus a head term)."""
    losses = {}
    for t, g in grads.items():
        loss = shared @ torch.tensor(g)
        if heads is not None:
            loss = loss + (heads[t] ** 2).sum()
        losses[t] = loss
    return losses


# -- registry ----------------------------------------------------------------------------------


def test_registry_rejects_unknown_names_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown gradient strategy 'nope'.*'gradnorm'.*'sum'"):
        build_strategy("nope")


def test_config_choices_are_the_registered_strategies():
    hint = typing.get_type_hints(TrainConfig)["strategy"]
    assert set(typing.get_args(hint)) == set(STRATEGIES)
    with pytest.raises(ConfigError, match="train.strategy"):
        load_config(None, ["train.strategy=nope"])


# -- PCGrad ------------------------------------------------------------------------------------


def test_pcgrad_two_conflicting_2d_gradients_textbook():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot = -1: a conflict
    # g1 - (g1.g2 / |g2|^2) g2 = (1, 0) + 1/2 (-1, 1);  g2 - (g2.g1 / |g1|^2) g1 = (-1, 1) + (1, 0)
    assert torch.allclose(project_conflicting(grads, 0, [1]), torch.tensor([0.5, 0.5]))
    assert torch.allclose(project_conflicting(grads, 1, [0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(pcgrad_sum(grads, [[1], [0]]), torch.tensor([0.5, 1.5]))
    # each projected gradient is orthogonal to the gradient it was projected against
    assert torch.dot(project_conflicting(grads, 0, [1]), grads[1]).abs() < 1e-6


def test_pcgrad_leaves_non_conflicting_gradients_untouched():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # all dots >= 0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        assert torch.equal(project_conflicting(grads, i, others), grads[i])
    assert torch.allclose(pcgrad_sum(grads, [[1, 2], [0, 2], [0, 1]]), grads.sum(0))


def test_pcgrad_three_tasks_textbook_and_order_dependence():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    expected = {
        (0, (1, 2)): [0.0, 0.0],  # (1,0) -> (.5,.5) -> (0,0)
        (0, (2, 1)): [0.0, 0.0],  # (1,0) -> (.5,-.5) -> (0,0)
        (1, (0, 2)): [-0.5, 0.5],  # (-1,1) -> (0,1) -> (-.5,.5)
        (1, (2, 0)): [0.0, 1.0],  # g2.g3 = 0: untouched by g3, then (0,1)
        (2, (0, 1)): [-0.5, -0.5],
        (2, (1, 0)): [0.0, -1.0],
    }
    for (i, order), want in expected.items():
        assert torch.allclose(project_conflicting(g, i, list(order)), torch.tensor(want)), (
            i,
            order,
        )
    # a third task orthogonal to both leaves the first two's projections as with two tasks
    g3 = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(pcgrad_sum(g3, [[1, 2], [2, 0], [0, 1]]), torch.tensor([0.5, 1.5, 1.0]))


def test_pcgrad_strategy_projects_shared_grads_and_keeps_head_grads():
    shared = nn.Parameter(torch.zeros(2))
    unused = nn.Parameter(torch.zeros(3))  # like a pooler no head reads
    heads = {t: nn.Parameter(torch.tensor([1.0, 2.0])) for t in ("a", "b")}
    losses = _linear_losses(shared, {"a": [1.0, 0.0], "b": [-1.0, 1.0]}, heads)
    weights = PCGradStrategy(seed=0).backward(losses, [shared, unused])
    assert weights == {"a": 1.0, "b": 1.0}
    assert torch.allclose(shared.grad, torch.tensor([0.5, 1.5]))
    assert unused.grad is None  # the optimiser skips it, as it would under sum
    for h in heads.values():
        assert torch.allclose(h.grad, torch.tensor([2.0, 4.0]))  # own task's gradient only


def test_pcgrad_with_one_task_is_the_sum():
    shared = nn.Parameter(torch.zeros(2))
    PCGradStrategy().backward(_linear_losses(shared, {"a": [3.0, -1.0]}), [shared])
    assert torch.equal(shared.grad, torch.tensor([3.0, -1.0]))


def test_pcgrad_order_is_seeded_and_resumable(tmp_path):
    a, b = PCGradStrategy(seed=5), PCGradStrategy(seed=5)
    assert [a._order(0, 4) for _ in range(5)] == [b._order(0, 4) for _ in range(5)]
    save_state(tmp_path / "s", {"strategy": a.state_dict()})
    c = PCGradStrategy(seed=99)
    c.load_state_dict(load_state(tmp_path / "s")["strategy"])
    assert [a._order(1, 4) for _ in range(5)] == [c._order(1, 4) for _ in range(5)]


# -- GradNorm ----------------------------------------------------------------------------------


def _gradnorm_toy(alpha: float, rates: dict[str, float], norms: dict[str, float], steps: int):
    """Tasks whose losses fall by ``rates[t]`` a step and whose gradients on the shared layer
    have fixed norms ``norms[t]``: the weighting rule alone, on a known problem."""
    layer = nn.Parameter(torch.zeros(len(rates)))
    strategy = GradNormStrategy(list(rates), [layer], alpha=alpha, lr=0.05)
    history = []
    for step in range(steps):
        losses = {}
        for i, t in enumerate(rates):
            direction = torch.zeros(len(rates))
            direction[i] = norms[t]
            linear = layer @ direction
            losses[t] = rates[t] ** step + linear - linear.detach()  # value r^step, grad fixed
        strategy.backward(losses, [layer])
        layer.grad = None
        history.append(strategy.current_weights())
    return history


def test_gradnorm_moves_weight_to_the_slower_task_and_keeps_the_sum():
    history = _gradnorm_toy(1.5, {"fast": 0.9, "slow": 0.99}, {"fast": 1.0, "slow": 1.0}, 40)
    final = history[-1]
    assert final["slow"] > 1.2 > 0.8 > final["fast"]
    for weights in history:
        assert sum(weights.values()) == pytest.approx(2.0, abs=1e-5)
        assert min(weights.values()) > 0


def test_gradnorm_alpha_zero_equalises_weighted_gradient_norms():
    history = _gradnorm_toy(0.0, {"a": 0.95, "b": 0.95, "c": 0.95}, {"a": 4, "b": 1, "c": 1}, 200)
    w = history[-1]
    assert sum(w.values()) == pytest.approx(3.0, abs=1e-5)
    # w_a * 4 ~ w_b * 1 = w_c * 1  =>  w ~ (1/3, 4/3, 4/3)
    assert w["a"] == pytest.approx(1 / 3, abs=0.1)
    assert w["b"] == pytest.approx(4 / 3, abs=0.1) and w["c"] == pytest.approx(4 / 3, abs=0.1)


def test_gradnorm_trains_the_model_with_the_weights_it_returns():
    shared = nn.Parameter(torch.zeros(2))
    strategy = GradNormStrategy(["a", "b"], [shared], alpha=1.5, lr=0.1)
    with torch.no_grad():
        strategy.weights["a"].fill_(1.5)
        strategy.weights["b"].fill_(0.5)
    used = strategy.backward(_linear_losses(shared, {"a": [1.0, 0.0], "b": [0.0, 2.0]}), [shared])
    assert used == {"a": 1.5, "b": 0.5}
    assert torch.allclose(shared.grad, torch.tensor([1.5, 1.0]))
    assert sum(strategy.current_weights().values()) == pytest.approx(2.0)


def test_gradnorm_with_one_task_per_step_uses_the_latest_values_of_the_others():
    shared = nn.Parameter(torch.zeros(2))
    strategy = GradNormStrategy(["a", "b"], [shared], alpha=1.5, lr=0.1)
    strategy.backward(_linear_losses(shared, {"a": [1.0, 0.0]}), [shared])
    assert strategy.current_weights() == {"a": 1.0, "b": 1.0}  # nothing to balance against yet
    strategy.backward(_linear_losses(shared, {"b": [0.0, 3.0]}), [shared])
    weights = strategy.current_weights()
    assert weights["b"] < 1.0 < weights["a"]  # b's gradient is 3x a's: b is turned down


def test_gradnorm_state_round_trips_through_a_checkpoint(tmp_path):
    layer = nn.Parameter(torch.zeros(2))
    a = GradNormStrategy(["x", "y"], [layer], alpha=1.5, lr=0.05)
    b = GradNormStrategy(["x", "y"], [layer], alpha=1.5, lr=0.05)
    for step in range(3):
        losses = {t: torch.tensor(0.9**step) + layer.sum() for t in ("x", "y")}
        a.backward(losses, [layer])
    save_state(tmp_path / "s", {"strategy": a.state_dict()})
    b.load_state_dict(load_state(tmp_path / "s")["strategy"])
    assert b.current_weights() == a.current_weights() and b.initial_loss == a.initial_loss
    for s in (a, b):
        s.backward({t: torch.tensor(0.5) * (1 + layer.sum()) for t in ("x", "y")}, [layer])
    assert b.current_weights() == a.current_weights()


def test_gradnorm_layer_defaults_to_the_last_encoder_layer(tiny_model):
    from minbert.model.multitask import MultiTaskModel

    model = MultiTaskModel(
        tiny_model, load_config(None, ["train.tasks=['sst','sts']"]).head_specs()
    )
    last = [p for n, p in model.named_parameters() if n.startswith("encoder.encoder.layer.1.")]
    assert layer_parameters(model, "") == last
    embeddings = layer_parameters(model, "encoder.embeddings")
    assert len(embeddings) == 5  # word, position, type, LayerNorm weight and bias
    for bad in ("encoder.encoder.layer.9", "heads.sst"):
        with pytest.raises(ConfigError, match="train.gradnorm.layer"):
            layer_parameters(model, bad)


# -- uncertainty -------------------------------------------------------------------------------


def test_uncertainty_weights_go_to_inverse_losses():
    shared = nn.Parameter(torch.zeros(1))
    strategy = UncertaintyStrategy(["big", "small"], lr=0.05)
    for _ in range(400):
        losses = {"big": 4.0 + 0 * shared.sum(), "small": 0.25 + 0 * shared.sum()}
        strategy.backward(losses, [shared])
    w = strategy.current_weights()
    assert w["big"] == pytest.approx(0.25, rel=0.05)  # exp(-s) -> 1 / L at the optimum
    assert w["small"] == pytest.approx(4.0, rel=0.05)


def test_uncertainty_starts_as_sum_and_resumes(tmp_path):
    shared = nn.Parameter(torch.zeros(2))
    a = UncertaintyStrategy(["a", "b"], lr=0.1)
    used = a.backward(_linear_losses(shared, {"a": [1.0, 0.0], "b": [0.0, 1.0]}), [shared])
    assert used == {"a": 1.0, "b": 1.0}
    assert torch.equal(shared.grad, torch.tensor([1.0, 1.0]))
    save_state(tmp_path / "s", {"strategy": a.state_dict()})
    b = UncertaintyStrategy(["a", "b"], lr=0.1)
    b.load_state_dict(load_state(tmp_path / "s")["strategy"])
    for s in (a, b):
        s.backward({"a": torch.tensor(2.0), "b": torch.tensor(0.5)}, [shared])
    assert a.current_weights() == b.current_weights()
