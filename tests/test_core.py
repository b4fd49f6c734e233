"""The training core's contracts: accumulation, in-process reuse, trainable globs, best-model
choice, renamed keys (tiny random model and data, seconds)."""

import hashlib
import json
import logging
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from tiny_run import run_config

from minbert.config import ConfigError, config_from_dict, load_config
from minbert.run.layout import RunDir
from minbert.train.state import load_state, save_state
from minbert.train.trainer import Trainer

NO_DROPOUT = [
    "model.hidden_dropout=0",
    "model.attention_dropout=0",
    "heads.sst.dropout=0",
    "heads.quora.dropout=0",
    "train.warmup_ratio=0",
]


def _one_step_in_float64(root, tmp, batch_size, accumulate):
    config = run_config(
        root,
        *NO_DROPOUT,
        f"train.batch_size={batch_size}",
        f"train.accumulate_steps={accumulate}",
    )
    trainer = Trainer(config, tmp)
    trainer.model.double()
    losses, _, sizes = trainer.train_step({"sst": 32, "quora": 32, "sts": 32})
    return losses, sizes, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_accumulated_micro_batches_equal_the_whole_batch(tiny_setup, tmp_path):
    whole, sizes, after = _one_step_in_float64(tiny_setup, tmp_path / "a", 32, 1)
    split, split_sizes, split_after = _one_step_in_float64(tiny_setup, tmp_path / "b", 16, 2)
    assert sizes == split_sizes == {"sst": 32, "quora": 32, "sts": 32}
    for task in whole:
        assert split[task] == pytest.approx(whole[task], abs=1e-10)
    for name, p in after.items():
        assert (split_after[name] - p).abs().max().item() <= 1e-10, name


def test_accumulation_plans_steps_of_the_whole_batch(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.batch_size=4", "train.accumulate_steps=2")
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.plans[0][0] == {"sst": 8}  # 40 rows per task, steps of 8 in 2 halves
    assert len(trainer.plans[0]) == 15


def test_accumulation_needs_a_linear_strategy():
    with pytest.raises(ConfigError, match="train.accumulate_steps: the pcgrad strategy"):
        load_config(None, ["train.accumulate_steps=2", "train.strategy=pcgrad"])


CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tiny_run import run_config
from minbert.train.trainer import Trainer
Trainer(run_config(Path({root!r}), *{overrides!r}), {out!r}).run()
"""


def _fingerprint(run: Path) -> tuple:
    weights = hashlib.sha256((RunDir(run).best / "model.safetensors").read_bytes()).hexdigest()
    dev = [r["dev"] for r in RunDir(run).read_metrics()]
    predictions = RunDir(run).predictions("sst", "dev").read_bytes()
    return weights, json.dumps(dev), predictions


def test_two_runs_in_one_process_equal_two_processes(tiny_setup, tmp_path):
    overrides = ["train.threads=1", "train.epochs=2", "heads.quora.calibrate=0.2"]
    handlers = list(logging.getLogger("minbert").handlers)
    sigint = signal.getsignal(signal.SIGINT)
    for name in ("in1", "in2"):
        Trainer(run_config(tiny_setup, *overrides), tmp_path / name).run()
    assert logging.getLogger("minbert").handlers == handlers  # nothing left behind
    assert signal.getsignal(signal.SIGINT) is sigint
    tests = str(Path(__file__).parent)
    for name in ("out1", "out2"):
        script = CHILD.format(
            tests=tests, root=str(tiny_setup), overrides=overrides, out=str(tmp_path / name)
        )
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    prints = {name: _fingerprint(tmp_path / name) for name in ("in1", "in2", "out1", "out2")}
    assert prints["in1"] == prints["in2"] == prints["out1"] == prints["out2"]


def test_trainable_globs_choose_what_trains(tiny_setup, tmp_path):
    config = run_config(
        tiny_setup, "train.trainable=['heads.*', 'encoder.encoder.layer.1.*']", "train.epochs=1"
    )
    trainer = Trainer(config, tmp_path / "run")
    trains = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert "encoder.encoder.layer.1.output.dense.weight" in trains
    assert "heads.sst.classifier.1.weight" in trains
    assert not any(
        n.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.")) for n in trains
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step({"sst": 8})
    for name, p in trainer.model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if name not in trains:
            assert not changed, f"{name} is frozen but moved"
    frozen = run_config(tiny_setup, "model.mode=frozen")
    assert frozen.trainable_patterns() == ["heads.*"]


def test_a_trainable_pattern_that_matches_nothing_is_an_error(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.trainable=['encoder.layers.*']")
    with pytest.raises(ConfigError, match="train.trainable: 'encoder.layers.\\*' matches no"):
        Trainer(config, tmp_path / "run")


def test_select_by_picks_the_epoch_of_that_metric(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.select_by=sts_pearson", "train.epochs=3")
    summary = Trainer(config, tmp_path / "run").run()
    records = RunDir(tmp_path / "run").read_metrics()
    best = max(records, key=lambda r: r["dev"]["sts_pearson"])  # first of equals
    assert summary["best_epoch"] == best["epoch"]
    meta = json.loads((RunDir(tmp_path / "run").best / "meta.json").read_text())
    assert meta["epoch"] == best["epoch"]
    with pytest.raises(ConfigError, match="train.select_by: 'cfimdb_accuracy' is not allowed"):
        load_config(None, ["train.select_by=cfimdb_accuracy"])


def test_moved_keys_keep_working_and_name_the_new_key(caplog):
    with caplog.at_level(logging.WARNING, logger="minbert"):
        config = load_config(
            None, ["train.tasks=['sts']", "heads.sts.cosent=2", "heads.sts.cosent_scale=5"]
        )
    assert config.objective("sts").cosent.weight == 2.0
    assert config.objective("sts").cosent.scale == 5.0
    assert "objectives.sts.cosent.weight" in caplog.text
    with pytest.raises(ConfigError, match="keep objectives.sst.rdrop.weight"):
        load_config(None, ["heads.sst.rdrop=1", "objectives.sst.rdrop.weight=2"])
    # A saved config (every key, in the new spelling) loads back to the same config.
    assert config_from_dict(tomllib.loads(config.to_toml())) == config


def test_an_extra_callback_sees_each_epoch_after_best_and_checkpoint(tiny_setup, tmp_path):
    from minbert.train.callbacks import Callback

    class Pruner(Callback):  # what a hyper-parameter search plugs in
        name = "pruner"

        def __init__(self):
            self.seen = []

        def on_epoch_end(self, trainer, record):
            run = RunDir(trainer.run_dir.root)
            saved = json.loads((run.last / "state.json").read_text())["run"]
            steps_done = saved["step_in_epoch"] == len(trainer.plans[saved["epoch"] - 1])
            self.seen.append((record["epoch"], saved["epoch"], steps_done, run.best.is_dir()))
            if record["epoch"] == 2:
                raise RuntimeError("pruned")

    pruner = Pruner()
    config = run_config(tiny_setup, "train.epochs=3")
    with pytest.raises(RuntimeError, match="pruned"):
        Trainer(config, tmp_path / "run", callbacks=[pruner]).run()
    # Each epoch's checkpoint is the state after its last step (a resume redoes only the
    # evaluation), and best/ is saved.
    assert pruner.seen == [(1, 1, True, True), (2, 2, True, True)]


def test_a_checkpoint_in_the_old_layout_still_resumes(tiny_setup, tmp_path):
    config = run_config(tiny_setup, "train.ema_decay=0.9", "train.epochs=1")
    first = Trainer(config, tmp_path / "a")
    for _ in range(3):
        first.train_step({"sst": 8})
    save_state(tmp_path / "last", first._training_state())  # what a checkpoint holds
    state = load_state(tmp_path / "last")
    old = {k: v for k, v in state.items() if not k.startswith(("streams.", "callbacks"))}
    old |= {"streams": {t: state[f"streams.{t}"] for t in first.tasks}}
    old |= {"average": state["callbacks"]["average"], "smart": {}}
    del old["objectives"]
    a = first.train_step({"quora": 8})
    second = Trainer(config, tmp_path / "b")
    second._restore(old)  # the RNGs too: the process's generators are as they were at `state`
    assert second._training_state().keys() == state.keys()
    assert second.train_step({"quora": 8}) == a
    for (name, p), q in zip(first.model.named_parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q), name
