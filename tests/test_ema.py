"""The weight average: its update rule, the swap, resume, and the trainer scoring it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import run_config
from torch import nn

from minbert.train.ema import WeightAverage
from minbert.train.trainer import Trainer


def test_update_follows_the_warmed_up_decay():
    layer = nn.Linear(3, 2)
    start = [p.detach().clone() for p in layer.parameters()]
    average = WeightAverage(layer, decay=0.9)
    expected = start
    for n in range(1, 100):  # capped at 0.9 from n = 80 on
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(1.0)
        average.update()
        d = min(0.9, (1 + n) / (10 + n))
        live = layer.parameters()
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, live, strict=True)]
    for got, want in zip(average.average, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert average.current_decay() == 0.9


def test_swapped_in_holds_the_average_and_restores_the_weights():
    layer = nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.add_(4.0)
    own = layer.weight.detach().clone()
    average.update()
    with average.swapped_in():
        torch.testing.assert_close(layer.weight, average.params[0])  # the same tensor
        assert not torch.equal(layer.weight, own)
        held = layer.weight.detach().clone()
    torch.testing.assert_close(layer.weight, own)
    torch.testing.assert_close(average.average[0], held)


def test_state_round_trip_and_mismatch():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    average = WeightAverage(a, 0.99)
    average.update()
    other = WeightAverage(b, 0.99)
    other.load_state_dict(average.state_dict())
    assert other.updates == 1
    for x, y in zip(other.average, average.average, strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="does not cover"):
        WeightAverage(nn.Linear(3, 2, bias=False), 0.99).load_state_dict(average.state_dict())


def test_trainer_scores_and_saves_the_average(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.ema_decay=0.9", "train.epochs=1")
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    best = load_file(tmp_path / "run" / "best" / "model.safetensors")
    (ema,) = [c for c in trainer.callbacks.callbacks if c.name == "average"]
    names = ema.average.names
    for name, averaged in zip(names, ema.average.average, strict=True):
        assert torch.equal(best[name], averaged), name
    live = dict(trainer.model.named_parameters())
    assert any(not torch.equal(best[n], live[n].detach()) for n in names)
    saved = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())["dev"]
    final = json.loads((tmp_path / "run" / "final.json").read_text())["dev"]
    assert saved == final  # what was scored in training is what the saved model scores
