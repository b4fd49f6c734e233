"""Every gradient strategy, SMART and the conflict log, end to end through the Trainer on the
tiny random model and tiny data of test_trainer (seconds each)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import run_config, stop_after_step_then_resume

from minbert.config import ConfigError, load_config
from minbert.eval.report import joined_step_log
from minbert.train.conflicts import conflict_stats, epoch_fields, log_conflicts
from minbert.train.trainer import Trainer

SHORT = ["train.epochs=2", "train.steps_per_epoch=3", "train.threads=1"]
PAIRS = {"sst/quora", "sst/sts", "quora/sts"}


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "strategy,extra",
    [
        ("pcgrad", []),
        ("gradnorm", []),
        ("gradnorm", ["train.gradnorm.layer=encoder.embeddings", "train.gradnorm.alpha=0.5"]),
        ("uncertainty", []),
        ("sum", ["train.smart.enabled=true", "train.smart.steps=2"]),
        ("sum", ["train.smart.enabled=true", "train.smart.bregman_weight=1.0"]),
    ],
)
def test_strategy_trains_end_to_end(tiny_setup, tmp_path, strategy, extra):
    config = run_config(
        tiny_setup,
        *SHORT,
        f"train.strategy={strategy}",
        "train.schedule=interleaved",
        "train.sampling=equal",
        "train.log_conflicts_every=2",
        *extra,
    )
    trainer = Trainer(config, tmp_path / "run")
    encoder_before = trainer.model.encoder.embeddings.word_embeddings.weight.clone()
    summary = trainer.run()
    assert all(math.isfinite(v) for v in summary["dev"].values())
    assert not torch.equal(encoder_before, trainer.model.encoder.embeddings.word_embeddings.weight)
    records = _records(tmp_path / "run")
    conflicts = joined_step_log(records, "conflicts")
    assert conflicts["step"] == [2, 4, 6]
    assert set(conflicts["cosine"]) == PAIRS
    assert all(-1 <= c <= 1 for values in conflicts["cosine"].values() for c in values)
    assert set(records[0]["conflicts"]["conflict_rate"]) == PAIRS
    report = tmp_path / "run" / "report"
    assert (report / "conflicts.png").is_file()
    assert "## Gradient conflicts" in (report / "summary.md").read_text()
    if strategy in ("gradnorm", "uncertainty"):
        weights = joined_step_log(records, "task_weights")
        assert weights["step"] == list(range(1, 7))
        if strategy == "gradnorm":
            sums = [sum(w[i] for t, w in weights.items() if t != "step") for i in range(6)]
            assert sums == pytest.approx([3.0] * 6, abs=1e-4)
        assert (report / "task-weights.png").is_file()
    else:
        assert "task_weights" not in records[0]


def test_round_robin_gradnorm_logs_one_weight_per_step(tiny_setup, tmp_path):
    config = run_config(
        tiny_setup,
        *SHORT,
        "train.strategy=gradnorm",
        "train.schedule=round_robin",
        "train.sampling=equal",
    )
    Trainer(config, tmp_path / "run").run()
    weights = joined_step_log(_records(tmp_path / "run"), "task_weights")
    for i in range(6):
        present = [t for t in ("sst", "quora", "sts") if weights[t][i] is not None]
        assert len(present) == 1  # the task of that step


def test_conflict_logging_does_not_change_the_run(tiny_setup, tmp_path):
    # round_robin: every logged step measures the two absent tasks on probe batches
    base = [*SHORT, "train.schedule=round_robin", "train.sampling=equal", "heads.quora.swap=true"]
    heads = ["heads.quora.encoding=bi"]
    plain = Trainer(run_config(tiny_setup, *base, *heads), tmp_path / "plain").run()
    logged_config = run_config(tiny_setup, *base, *heads, "train.log_conflicts_every=1")
    logged = Trainer(logged_config, tmp_path / "logged").run()
    assert plain["dev"] == logged["dev"]
    a = load_file(tmp_path / "plain" / "best" / "model.safetensors")
    b = load_file(tmp_path / "logged" / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    conflicts = joined_step_log(_records(tmp_path / "logged"), "conflicts")
    assert conflicts["step"] == list(range(1, 7))
    assert all(None not in values for values in conflicts["cosine"].values())


def test_strategy_and_smart_state_resume_exactly(tiny_setup, tmp_path):
    settings = [
        *SHORT,
        "train.strategy=gradnorm",
        "train.schedule=interleaved",
        "train.sampling=equal",
        "train.log_conflicts_every=2",
        "train.smart.enabled=true",
        "train.smart.bregman_weight=0.5",
        "train.checkpoint_every=1",
    ]
    config = run_config(tiny_setup, *settings)
    Trainer(config, tmp_path / "whole").run()

    stop_after_step_then_resume(
        config, tmp_path / "resumed", 4
    )  # mid-epoch 2, between two conflict logs

    timing = {"train_seconds", "elapsed_seconds", "epoch_seconds", "peak_rss_mib"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _records(tmp_path / "whole")]
    again = [
        {k: v for k, v in r.items() if k not in timing} for r in _records(tmp_path / "resumed")
    ]
    assert strip == again
    a = load_file(tmp_path / "whole" / "best" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_conflict_stats_and_epoch_fields():
    grads = {
        "a": torch.tensor([1.0, 0.0]),
        "b": torch.tensor([-1.0, 1.0]),
        "c": torch.tensor([0.0, 3.0]),
    }
    stats = conflict_stats(grads)
    assert stats["cosine"]["a/b"] == pytest.approx(-1 / math.sqrt(2))
    assert stats["cosine"]["a/c"] == pytest.approx(0.0)
    assert stats["cosine"]["b/c"] == pytest.approx(1 / math.sqrt(2))
    mean = (1 + math.sqrt(2) + 3) / 3
    assert stats["norm_ratio"]["c"] == pytest.approx(3 / mean, rel=1e-5)
    columns: dict = {}
    log_conflicts(columns, 10, stats)
    log_conflicts(columns, 20, conflict_stats({k: -v if k == "b" else v for k, v in grads.items()}))
    fields = epoch_fields(columns)["conflicts"]
    assert fields["step"] == [10, 20]
    assert fields["conflict_rate"] == {"a/b": 0.5, "a/c": 0.0, "b/c": 0.5}
    assert fields["mean_cosine"]["a/b"] == pytest.approx(0.0, abs=1e-6)
    json.dumps(fields)  # plain JSON


def test_config_rejects_conflict_logging_without_two_trained_tasks():
    with pytest.raises(ConfigError, match="train.log_conflicts_every"):
        load_config(None, ["train.tasks=['sst']", "train.log_conflicts_every=5"])
    with pytest.raises(ConfigError, match="train.smart.enabled"):
        load_config(None, ["train.smart.enabled=true", "train.smart.weight=0"])
    config = load_config(None, ["train.smart.enabled=true", "train.gradnorm.alpha=0.5"])
    assert load_config(None, []).train.smart.enabled is False
    assert config.train.gradnorm.alpha == 0.5 and config.train.smart.enabled
