"""SMART on a tiny random model: the perturbation's bounds, the divergences, the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minbert.config import load_config
from minbert.data.batching import Batch, pad_sequences
from minbert.data.tasks import TASKS
from minbert.model.multitask import MultiTaskModel
from minbert.objectives.smart import Smart, SmartConfig, divergence, symmetric_kl

# single sentence, cross-encoded pair, bi-encoded pair (one encoder call of 2B sequences)
HEADS = ["heads.quora.encoding=bi", "heads.sts.encoding=cross"]


@pytest.fixture
def model(tiny_model):
    config = load_config(None, ["train.tasks=['sst','quora','sts']", *HEADS])
    return MultiTaskModel(tiny_model, config.head_specs()).train()


def _segment(rng, n, vocab):
    lengths = rng.integers(3, 9, size=n)
    lengths[0] = 8  # the longest row; the others are padded
    ids = [np.concatenate([[2], rng.integers(5, vocab, size=k - 2), [3]]) for k in lengths]
    return pad_sequences(ids, [np.zeros_like(x) for x in ids])


def _batch(task: str, vocab: int, n: int = 4) -> Batch:
    rng = np.random.default_rng(len(task))
    parts = 2 if task == "quora" else 1  # quora is bi-encoded here
    segments = [_segment(rng, n, vocab) for _ in range(parts)]
    kind = TASKS[task].label_kind
    labels = {
        "class": torch.from_numpy(rng.integers(0, 5, n)),
        "binary": torch.from_numpy(rng.integers(0, 2, n).astype(np.float32)),
        "score": torch.from_numpy(rng.uniform(0, 1, n).astype(np.float32)),
    }[kind]
    return Batch(segments, labels, np.arange(n))


def _final_linear(head):
    return [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_perturbation_stays_inside_epsilon_and_off_padding(model, tiny_config, task):
    # noise and steps far larger than epsilon: the projection must hold them in
    config = SmartConfig(enabled=True, epsilon=1e-3, step_size=0.1, steps=3, noise_std=1.0)
    smart = Smart(config, model)
    batch = _batch(task, tiny_config.vocab_size)
    outputs, term = smart.forward(model, task, batch)
    (delta,) = smart.last_perturbation
    if task == "quora":  # the bi-encoder pads both sentences to one width, one encoder call
        width = max(s.input_ids.shape[1] for s in batch.segments)
        ids = torch.cat(
            [F.pad(s.input_ids, (0, width - s.input_ids.shape[1])) for s in batch.segments]
        )
    else:
        ids = batch.segments[0].input_ids
    assert delta.shape == (*ids.shape, tiny_config.hidden_size)
    assert delta.abs().max() <= 1e-3 + 1e-9
    assert (delta[ids == 0] == 0).all()  # [PAD] positions are not perturbed
    assert (delta[ids != 0].abs() > 0).float().mean() > 0.5
    assert term.ndim == 0 and term.item() > 0
    term.backward()  # the term trains the encoder
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_regulariser_is_zero_when_the_model_is_constant(model, tiny_config, task):
    with torch.no_grad():
        _final_linear(model.heads[task]).weight.zero_()  # outputs = bias, whatever the input
    config = SmartConfig(enabled=True, epsilon=1e-2, step_size=1e-2, steps=2, noise_std=1e-2)
    _, term = Smart(config, model).forward(model, task, _batch(task, tiny_config.vocab_size))
    assert term.item() == 0.0


def test_clean_outputs_are_the_models_outputs(model, tiny_config):
    model.eval()
    batch = _batch("sst", tiny_config.vocab_size)
    smart = Smart(SmartConfig(enabled=True), model)
    outputs, _ = smart.forward(model, "sst", batch)
    assert torch.equal(outputs, model("sst", batch))
    # no hook is left behind: the normal path stays hook-free
    assert not model.encoder.embeddings.word_embeddings._forward_hooks


def test_zero_perturbation_gives_zero_term_in_train_mode(model, tiny_config):
    # dropout is on; the perturbed forward replays the clean forward's dropout masks
    config = SmartConfig(enabled=True, epsilon=0.0, noise_std=0.0, steps=1)
    _, term = Smart(config, model).forward(model, "quora", _batch("quora", tiny_config.vocab_size))
    assert term.item() == 0.0


def test_divergences_against_references():
    torch.manual_seed(0)
    p, q = torch.randn(6, 5), torch.randn(6, 5)
    kl_pq = F.kl_div(
        F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="batchmean", log_target=True
    )
    kl_qp = F.kl_div(
        F.log_softmax(p, -1), F.log_softmax(q, -1), reduction="batchmean", log_target=True
    )
    assert torch.allclose(symmetric_kl(p, q), kl_pq + kl_qp, atol=1e-6)
    assert torch.allclose(divergence("class", p, q), kl_pq + kl_qp, atol=1e-6)
    z, y = torch.randn(6), torch.randn(6)
    a, b = torch.sigmoid(z), torch.sigmoid(y)
    bernoulli = ((a - b) * (torch.logit(a) - torch.logit(b))).mean()  # symmetric KL of Bernoullis
    assert torch.allclose(divergence("binary", z, y), bernoulli, atol=1e-5)
    assert torch.allclose(divergence("score", z, y), F.mse_loss(z, y))
    assert divergence("class", p, p).item() == 0.0


def test_bregman_teacher_starts_equal_and_follows_the_model_by_momentum(model, tiny_config):
    config = SmartConfig(enabled=True, weight=0.0, bregman_weight=1.0, bregman_beta=0.9)
    smart = Smart(config, model)
    batch = _batch("sts", tiny_config.vocab_size)
    _, term = smart.forward(model, "sts", batch)
    assert term.item() == 0.0  # teacher == model, same dropout masks
    before = {k: v.clone() for k, v in smart.teacher.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    smart.after_step(model)
    for name, value in smart.teacher.state_dict().items():
        if value.is_floating_point() and name in dict(model.named_parameters()):
            assert torch.allclose(value, before[name] + 0.1, atol=1e-6), name
    _, term = smart.forward(model, "sts", batch)
    assert term.item() > 0
    state = smart.state_dict()
    other = Smart(config, model)
    other.load_state_dict(state)
    for name, value in other.teacher.state_dict().items():
        assert torch.equal(value, smart.teacher.state_dict()[name])
