"""The training loop on a tiny random model and tiny data files (seconds, no real weights)."""

import json

import pytest
from tiny_run import run_config

from minbert.config import ConfigError, load_config
from minbert.model.dropout import Dropout
from minbert.train import strategies
from minbert.train.trainer import Trainer


class Recording(strategies.SumStrategy):
    calls: list[list[str]] = []

    def backward(self, losses, shared_params):
        Recording.calls.append(sorted(losses))
        assert all(loss.ndim == 0 for loss in losses.values())
        assert shared_params and all(p.requires_grad for p in shared_params)
        return super().backward(losses, shared_params)


def test_interleaved_step_passes_one_loss_per_task(tiny_setup, tmp_path, monkeypatch):
    Recording.calls = []
    monkeypatch.setattr("minbert.train.trainer.build_strategy", lambda *a, **k: Recording())
    config = run_config(
        tiny_setup, "train.schedule=interleaved", "train.sampling=equal", "train.steps_per_epoch=3"
    )
    Trainer(config, tmp_path / "run").run()
    assert Recording.calls == [["quora", "sst", "sts"]] * 6


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("sequential", {"sst": 40, "quora": 40, "sts": 40}),
        ("round_robin", {"sst": 40, "quora": 40, "sts": 40}),  # 15 steps of 8, 5 per task
        ("interleaved", {"sst": 40, "quora": 40, "sts": 40}),  # 5 steps of 8 + 8 + 8
    ],
)
def test_examples_seen_per_epoch_are_logged(tiny_setup, tmp_path, schedule, expected):
    config = run_config(tiny_setup, f"train.schedule={schedule}", "train.sampling=equal")
    summary = Trainer(config, tmp_path / "run").run()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == 2
    assert records[0]["examples"] == records[0]["planned_examples"] == expected
    assert {
        "sst_accuracy",
        "quora_accuracy",
        "sts_pearson",
        "overall_mean",
        "overall_leaderboard",
    } <= set(summary["dev"])


def test_frozen_mode_only_trains_heads(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "model.mode=frozen", "train.tasks=['sst']", "train.epochs=1")
    trainer = Trainer(config, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    head_before = trainer.model.heads["sst"].classifier[-1].weight.clone()
    trainer.run()
    for k, v in trainer.model.encoder.state_dict().items():
        assert (v == before[k]).all(), k
    assert not (trainer.model.heads["sst"].classifier[-1].weight == head_before).all()


def test_max_steps_and_predictions(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.max_steps=3", "train.schedule=interleaved")
    Trainer(config, tmp_path / "run").run()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["step"] == 3
    for task in ("sst", "quora", "sts"):
        for split, n in (("dev", 12), ("test", 6)):
            lines = (
                (tmp_path / "run" / "predictions" / f"{task}-{split}.csv").read_text().splitlines()
            )
            assert lines[0] == "id,prediction" and len(lines) == n + 1
    sts = [
        float(line.split(",")[1])
        for line in (tmp_path / "run" / "predictions" / "sts-dev.csv").read_text().splitlines()[1:]
    ]
    assert all(0.0 <= s <= 5.0 for s in sts)


def test_same_seed_same_result(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.max_steps=4", "train.schedule=round_robin")
    a = Trainer(config, tmp_path / "a").run()["dev"]
    b = Trainer(config, tmp_path / "b").run()["dev"]
    assert a == b


def test_calibrated_threshold_comes_from_held_out_rows(tiny_setup, tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from minbert.eval.evaluate import predict
    from minbert.run.model_dir import load_model_dir

    config = run_config(tiny_setup, "heads.quora.calibrate=0.25", "train.epochs=1")
    trainer = Trainer(config, tmp_path / "run")
    assert len(trainer.heldout["quora"]) == 10 and len(trainer.train_data["quora"]) == 30
    held = set(trainer.heldout["quora"].ids)
    assert not held & set(trainer.train_data["quora"].ids)  # never trained on
    trainer.run()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    found = record["calibration"]["quora"]
    assert found["heldout_rows"] == 10
    assert found["heldout_accuracy"] >= found["heldout_accuracy_at_0"]
    saved = load_file(tmp_path / "run" / "best" / "model.safetensors")["heads.quora.threshold"]
    assert saved.item() == pytest.approx(found["threshold"], abs=1e-4)
    # The saved model predicts 1 exactly where its raw logit is above the threshold. The raw
    # logits come from the same model with its threshold at 0.
    model, _, _ = load_model_dir(tmp_path / "run")
    dev = trainer.dev_data["quora"]
    shifted = predict(model, dev)
    with torch.no_grad():
        model.heads["quora"].threshold.zero_()
    raw = predict(model, dev).outputs
    assert np.array_equal(shifted.values, (raw > saved.item()).astype(np.int64))
    # A threshold that changes decisions must change the predictions accordingly (the
    # calibrated one may change none of 12 tiny dev rows, so take one that does).
    cuts = (np.sort(raw)[1:] + np.sort(raw)[:-1]) / 2
    moved = next(c for c in cuts if not np.array_equal(raw > c, raw > 0))
    with torch.no_grad():
        model.heads["quora"].threshold.fill_(float(moved))
    assert np.array_equal(predict(model, dev).values, (raw > moved).astype(np.int64))
    assert not np.array_equal(predict(model, dev).values, (raw > 0).astype(np.int64))
    written = (tmp_path / "run" / "predictions" / "quora-dev.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[1]) for line in written] == shifted.values.tolist()
    summary = (tmp_path / "run" / "report" / "summary.md").read_text()
    assert "## Decision thresholds" in summary and f"{found['threshold']:.4f}" in summary


def test_calibration_needs_a_binary_task():
    from minbert.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="heads.sst.calibrate: only binary tasks"):
        load_config(None, ["heads.sst.calibrate=0.1"])


def test_layer_lr_decay_gives_each_layer_its_peak_lr(tiny_setup, tmp_path):
    config = run_config(
        tiny_setup,
        "train.lr=1e-4",
        "train.head_lr=1e-3",
        "train.layer_lr_decay=0.5",
        "heads.sts.encoding=bi",
        "heads.sts.kind=cosine",
        "heads.sts.own_layers=1",
    )
    trainer = Trainer(config, tmp_path / "run")
    groups = trainer.optimizer.param_groups  # initial_lr: the peak the schedule scales
    peak = {id(p): g["initial_lr"] for g in groups for p in g["params"]}
    lr = {name: peak[id(p)] for name, p in trainer.model.named_parameters()}
    # The tiny encoder has 2 layers: top 1e-4, the one below 5e-5, the embeddings 2.5e-5.
    assert lr["encoder.encoder.layer.1.output.dense.weight"] == pytest.approx(1e-4)
    assert lr["encoder.encoder.layer.0.output.dense.weight"] == pytest.approx(5e-5)
    assert lr["encoder.embeddings.word_embeddings.weight"] == pytest.approx(2.5e-5)
    assert lr["encoder.pooler.dense.weight"] == pytest.approx(1e-4)
    # STS's own copy of the top layer decays as the top layer; heads keep head_lr.
    assert lr["heads.sts.own_layers.0.output.dense.weight"] == pytest.approx(1e-4)
    assert lr["heads.sst.classifier.1.weight"] == pytest.approx(1e-3)


class CaptureTotals(strategies.SumStrategy):
    """The sum strategy, recording the totals it is handed (what the gradients come from)."""

    def __init__(self):
        self.seen = []

    def backward(self, losses, shared_params):
        self.seen.append({t: loss.item() for t, loss in losses.items()})
        return super().backward(losses, shared_params)


@pytest.mark.parametrize(
    ("task", "term", "options"),
    [
        ("sst", "rdrop", ["objectives.sst.rdrop.weight=2.0"]),
        ("sts", "cosent", ["objectives.sts.cosent.weight=1.5"]),
        (
            "quora",
            "contrastive",
            [
                "heads.quora.encoding=bi",
                "heads.quora.pooling=mean",
                "objectives.quora.contrastive.weight=0.5",
                "objectives.quora.contrastive.scale=5",
            ],
        ),
    ],
)
def test_each_extra_term_reaches_the_objective(
    task, term, options, tiny_setup, tmp_path, monkeypatch
):
    capture = CaptureTotals()
    monkeypatch.setattr("minbert.train.trainer.build_strategy", lambda *a, **k: capture)
    config = run_config(tiny_setup, f"train.tasks=['{task}']", *options)
    trainer = Trainer(config, tmp_path / "run")
    losses, terms, sizes = trainer.train_step({task: 8})
    assert sizes == {task: 8}  # rows of data, not rows through the model (R-Drop: twice)
    value = terms[f"{task}.{term}"]
    assert value > 1e-6, f"the {term} term is zero on this batch: the test shows nothing"
    # The strategy trains on the head loss plus the weighted term, and nothing else.
    assert capture.seen[0][task] == pytest.approx(losses[task] + value, rel=1e-6)
    # Switched off, the same step's total is the head loss alone.
    capture.seen.clear()
    plain = run_config(
        tiny_setup, f"train.tasks=['{task}']", *options[: -2 if term == "contrastive" else -1]
    )
    losses, terms, _ = Trainer(plain, tmp_path / "plain").train_step({task: 8})
    assert not terms and capture.seen[0][task] == pytest.approx(losses[task], rel=1e-6)


def test_rdrop_run_counts_rows_of_data(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.tasks=['sst']", "objectives.sst.rdrop.weight=2.0")
    summary = Trainer(config, tmp_path / "full").run()
    records = [
        json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[0]["examples"] == {"sst": 40} and "sst_accuracy" in summary["dev"]
    assert records[0]["train_terms"]["sst.rdrop"] > 0


def test_rdrop_is_not_combined_with_smart_or_contrastive():
    with pytest.raises(
        ConfigError, match="objectives.sst.rdrop.weight: not combined with train.smart"
    ):
        load_config(None, ["heads.sst.rdrop=1", "train.smart.enabled=true"])
    with pytest.raises(
        ConfigError,
        match="objectives.quora.rdrop.weight: not combined with objectives.quora.contrastive",
    ):
        load_config(
            None,
            [
                "train.tasks=['quora']",
                "heads.quora.encoding=bi",
                "heads.quora.contrastive=0.5",
                "heads.quora.rdrop=1",
            ],
        )


def test_encoder_dropout_overrides_reach_every_dropout(tiny_setup, tmp_path):
    def rates(trainer):
        encoder = trainer.model.encoder
        hidden = {
            m.p
            for name, m in encoder.named_modules()
            if isinstance(m, Dropout) and "attention.self" not in name
        }
        attention = {layer.attention.self.dropout_p for layer in encoder.encoder.layer}
        return hidden, attention

    pretrained = Trainer(run_config(tiny_setup), tmp_path / "a")
    assert rates(pretrained) == ({0.1}, {0.1})  # the tiny config.json's
    config = run_config(tiny_setup, "model.hidden_dropout=0.05", "model.attention_dropout=0")
    assert rates(Trainer(config, tmp_path / "b")) == ({0.05}, {0.0})


def test_encoder_dropout_is_the_pretrained_one_or_a_rate():
    with pytest.raises(ConfigError, match="model.attention_dropout: -1 .* or in"):
        load_config(None, ["model.attention_dropout=-0.5"])
    with pytest.raises(ConfigError, match="model.hidden_dropout"):
        load_config(None, ["model.hidden_dropout=0.95"])


def test_ptb_text_reaches_training_and_the_saved_run(tiny_setup, tmp_path):
    from minbert.run.model_dir import load_model_dir

    config = run_config(tiny_setup, "data.ptb_text=true", "train.tasks=['sst']", "train.epochs=1")
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.tokenizer.ptb_text
    trainer.run()
    _, tokenizer, saved = load_model_dir(tmp_path / "run")
    assert saved.data.ptb_text and tokenizer.ptb_text  # eval and predict read text alike
