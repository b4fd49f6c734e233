"""torchrun: two CPU ranks (gloo) on the tiny run against one process, through the real
command line (tests/ddp_child.py is each rank)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import tiny_overrides

from minbert.config import ConfigError, load_config
from minbert.run.layout import RunDir
from minbert.train.distributed import World
from minbert.train.state import TrainingError, load_state
from minbert.train.trainer import Trainer

CHILD = Path(__file__).with_name("ddp_child.py")
NO_DROPOUT = [
    "model.hidden_dropout=0",
    "model.attention_dropout=0",
    "heads.sst.dropout=0",
    "heads.quora.dropout=0",
]
# Every task in every step (PCGrad and GradNorm see several tasks); 7 rows a step split 4 + 3
# over two ranks, and a last batch of 5; checkpoints inside the epochs.
SETTINGS = [
    *NO_DROPOUT,
    "train.schedule=interleaved",
    "train.batch_size=7",
    "train.checkpoint_every=2",
    "train.threads=1",
    "train.dist_timeout=60",
]


def overrides(root: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(root), *SETTINGS, *extra]


def torchrun(out: Path, sets: list[str], *options: str, resume: bool = False, ranks: int = 2):
    """``minbert train`` on ``ranks`` torchrun ranks; the completed process (not checked)."""
    command, env = torchrun_command(out, sets, *options, resume=resume, ranks=ranks)
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def torchrun_command(out, sets, *options, resume=False, ranks=2) -> tuple[list[str], dict]:
    train = ["train", "--resume", str(out)] if resume else ["train", "--out", str(out)]
    for s in [] if resume else sets:
        train += ["--set", s]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        str(CHILD),
        "--watch",
        str(out),
        *options,
        "--",
        *train,
    ]
    return command, os.environ | {"OMP_NUM_THREADS": "1"}


def one_process(root: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    """The same run in this process, in float64: its final weights."""
    trainer = Trainer(load_config(None, overrides(root, *extra)), out)
    trainer.model.double()
    trainer.run()
    return final_weights(out)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """The model of the run's last checkpoint (saved after its last step)."""
    return load_state(RunDir(out).last)["model"]


def assert_same_weights(a: dict, b: dict, tolerance: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.float64, name
        assert (a[name] - b[name]).abs().max().item() <= tolerance, name


def files_of(run: Path) -> set[str]:
    skip = {"train.log", ".lock"}
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name not in skip}


@pytest.mark.parametrize("strategy", ["weighted", "pcgrad", "gradnorm", "uncertainty"])
def test_two_ranks_train_the_weights_of_one_process(tiny_setup, tmp_path, strategy):
    extra = [f"train.strategy={strategy}"]
    alone = one_process(tiny_setup, tmp_path / "one", *extra)
    done = torchrun(tmp_path / "two", overrides(tiny_setup, *extra), "--double")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path / "two"), alone, 1e-6)
    # Rank 1 writes nothing (ddp_child --watch would have failed it); rank 0 writes what
    # one process writes, and logs once.
    assert files_of(tmp_path / "two") == files_of(tmp_path / "one")
    log = RunDir(tmp_path / "two").log.read_text()
    assert log.count("epoch 2: examples seen") == 1
    assert "[rank 1]" not in done.stderr  # rank 1 logged no warning


@pytest.mark.parametrize(
    "adapter",
    [
        ["adapter.kind=lora", "adapter.lora.r=2", "adapter.lora.dropout=0"],
        ["adapter.kind=molora", "adapter.molora.router=token", "adapter.molora.r=2"]
        + ["adapter.molora.dropout=0", "adapter.molora.balance_weight=0"],
        ["adapter.kind=pals", "adapter.pals.size=8", "adapter.pals.heads=2"],
    ],
    ids=["lora", "molora-routed", "pals"],
)
def test_two_ranks_train_an_adapter_as_one_process_does(tiny_setup, tmp_path, adapter):
    # Per-task experts leave the other tasks' experts without a gradient on a step; every
    # rank must still make the same all-reduces. The balance term is off: each rank computes
    # it over its own tokens (README, "Adapters"), which is not the one process's value.
    # The routed runs agree to 1e-7..1e-6 in float64 (run to run), LoRA and PALs to 1e-6.
    extra = [*adapter, "train.lr=1e-2"]
    alone = one_process(tiny_setup, tmp_path / "one", *extra)
    done = torchrun(tmp_path / "two", overrides(tiny_setup, *extra), "--double")
    assert done.returncode == 0, done.stderr[-3000:]
    tolerance = 1e-5 if "adapter.molora.router=token" in adapter else 1e-6
    assert_same_weights(final_weights(tmp_path / "two"), alone, tolerance)
    assert files_of(tmp_path / "two") == files_of(tmp_path / "one")


def test_a_run_killed_on_one_rank_resumes_to_the_same_weights(tiny_setup, tmp_path):
    out = tmp_path / "two"
    alone = one_process(tiny_setup, tmp_path / "one")
    started = time.monotonic()
    killed = torchrun(out, overrides(tiny_setup), "--double", "--kill", "1:8")
    assert killed.returncode != 0
    assert "error: another rank stopped answering" in killed.stderr
    assert f"resume with: torchrun --nproc_per_node=N -m minbert train --resume {out}" in (
        killed.stderr.replace("\n", " ")
    )
    assert time.monotonic() - started < 120  # rank 0 stops, it does not hang
    assert load_state(RunDir(out).last)["run"]["step"] == 6  # checkpoint_every = 2
    resumed = torchrun(out, [], "--double", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in RunDir(out).log.read_text()
    assert_same_weights(final_weights(out), alone, 1e-6)
    with pytest.raises(TrainingError, match=r"saved by 2 rank\(s\); resume it with"):
        Trainer(load_config(RunDir(out).config), out, resume=True)  # one process


def test_sigterm_to_torchrun_stops_every_rank_after_a_step_and_resumes(tiny_setup, tmp_path):
    out = tmp_path / "two"
    alone = one_process(tiny_setup, tmp_path / "one", "train.epochs=4")
    sets = overrides(tiny_setup, "train.epochs=4")
    command, env = torchrun_command(out, sets, "--double", "--pause", "0.3")
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not RunDir(out).read_metrics() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch scored: well inside the run
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode != 0
    step = load_state(RunDir(out).last)["run"]["step"]
    assert 6 <= step < 24
    # after a step, or after the epoch's evaluation when the signal came during it (under load)
    assert "SIGTERM: stopped after " in stderr, stderr[-6000:]
    assert f"the state after step {step} is saved in" in stderr, stderr[-6000:]
    assert f"Resume with: torchrun --nproc_per_node=2 -m minbert train --resume {out}" in stderr
    resumed = torchrun(out, [], "--double", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(final_weights(out), alone, 1e-6)


def test_ranks_launched_with_different_configs_stop_naming_the_line(tiny_setup, tmp_path):
    done = torchrun(tmp_path / "run", overrides(tiny_setup), "--rank1-set", "train.lr=0.1")
    assert done.returncode != 0
    assert "rank 1 was launched with another config than rank 0" in done.stderr
    assert "lr = 0.1" in done.stderr
    assert not RunDir(tmp_path / "run").config.exists()


def test_a_rank_failing_alone_stops_every_rank_and_rank_0_names_it(tiny_setup, tmp_path):
    started = time.monotonic()
    done = torchrun(tmp_path / "run", overrides(tiny_setup), "--fail-build", "1")
    assert done.returncode != 0
    assert time.monotonic() - started < 120
    said = "error: rank 1 of 2 failed: FileNotFoundError: rank 1 cannot read its data (injected)"
    assert said in done.stderr
    assert not RunDir(tmp_path / "run").config.exists()  # rank 0 claimed nothing


def test_a_batch_smaller_than_the_world_is_refused_on_every_rank(tiny_setup, tmp_path):
    done = torchrun(tmp_path / "run", overrides(tiny_setup, "train.batch_size=1"))
    assert done.returncode != 0
    assert "train.batch_size × train.accumulate_steps = 1 row" in done.stderr
    assert not RunDir(tmp_path / "run").config.exists()


def test_shards_split_a_step_and_cover_it_once():
    rows = np.arange(7)
    parts = [World(rank=r, size=3).shard(rows) for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert np.array_equal(np.concatenate(parts), rows)
    assert np.array_equal(World().shard(rows), rows)


def test_the_world_of_one_makes_no_collective():
    alone = World()
    t = torch.ones(3)
    assert alone.all_reduce_(t) is t and torch.equal(t, torch.ones(3))
    assert alone.sum_floats({"a": 1.5}) == {"a": 1.5}
    assert alone.max_int(3) == 3 and alone.gather_object("x") == ["x"]
    with pytest.raises(ConfigError, match="boom"):
        alone.together(lambda: (_ for _ in ()).throw(ConfigError("boom")))
