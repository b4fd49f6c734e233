"""Never lose a run: an existing run is never replaced by accident, one process writes a
run folder, damaged checkpoints are named, every input is read before step 1, and a stop
during an evaluation or the final predictions resumes without training again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import QUICK, run_config

from minbert.cli import main
from minbert.config import load_config
from minbert.data.io import DataError
from minbert.run.layout import RunDir
from minbert.run.manifest import CheckpointError
from minbert.run.model_dir import load_model_dir
from minbert.train.trainer import Trainer, TrainingError, TrainingInterrupted

MEASURED = {"train_seconds", "elapsed_seconds", "peak_rss_mib"}


def _fingerprint(run: Path) -> dict[str, str]:
    """Every file of a run folder (but its lock) and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in RunDir(run).read_metrics()]


def _assert_same_results(a: Path, b: Path) -> None:
    assert _records(a) == _records(b)
    wa, wb = load_file(a / "best/model.safetensors"), load_file(b / "best/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for task in ("sst", "quora", "sts"):
        for split in ("dev", "test"):
            name = f"predictions/{task}-{split}.csv"
            assert (a / name).read_text() == (b / name).read_text(), name


@pytest.fixture
def finished(finished_tiny_run) -> Path:
    return finished_tiny_run


# -- 1. a new run never destroys an existing one ---------------------------------------------


def test_a_new_run_refuses_a_folder_holding_a_run(finished, capsys):
    before = _fingerprint(finished)
    config = str(finished / "config.toml")
    assert main(["train", "--config", config, "--out", str(finished)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already holds a run" in err
    assert f"--resume {finished}" in err and "--overwrite" in err
    assert _fingerprint(finished) == before


def test_overwrite_reads_every_input_before_removing_the_old_run(
    finished, tiny_setup, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="minbert")  # pytest's own handlers set the level
    run = tmp_path / "run"
    # a copy of the finished run, so the module's one stays as it is
    assert main(["train", "--config", str(finished / "config.toml"), "--out", str(run)]) == 0
    before = _fingerprint(run)
    bad_data = tmp_path / "data"
    bad_data.mkdir()
    for f in (tiny_setup / "data").iterdir():
        (bad_data / f.name).write_bytes(f.read_bytes())
    with (bad_data / "ids-sst-train.csv").open("a") as f:
        f.write("99\tbroken row with no label\n")
    capsys.readouterr()
    args = ["train", "--config", str(run / "config.toml"), "--out", str(run), "--overwrite"]
    assert main([*args, "--set", f"data.dir={bad_data}"]) == 2
    assert "ids-sst-train.csv:42" in capsys.readouterr().err
    assert _fingerprint(run) == before  # the old run, log included, untouched

    assert main([*args, "--set", "train.epochs=1"]) == 0
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1]
    assert (run / "train.log").read_text().count("training sst+quora+sts") == 1


def test_make_demo_twice_keeps_the_first_run():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = makefile[makefile.index("\ndemo:") :].split("\n\n")[0]
    assert "final.json" in demo and "--resume" in demo  # finished: scores; stopped: resumed


# -- 2. one run folder, one writer -----------------------------------------------------------


SLOW_STEPS = """
import sys, time
from minbert.cli import main
from minbert.train.trainer import Trainer

step = Trainer.train_step
Trainer.train_step = lambda self, plan: (time.sleep(0.3), step(self, plan))[1]
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args: str, wait: bool = True, slow: bool = False):
    start = ["-c", SLOW_STEPS] if slow else ["-m", "minbert.cli"]
    command = [sys.executable, *start, *args]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_writer_is_refused_while_the_first_finishes(tiny_setup, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(run_config(tiny_setup, *QUICK, "train.epochs=3").to_toml())
    run = tmp_path / "run"  # 45 steps of 0.3 s at least: the second writer comes meanwhile
    first = _cli("train", "--config", str(config), "--out", str(run), wait=False, slow=True)
    deadline = time.monotonic() + 120
    while not (run / "config.toml").is_file():  # the first one owns the folder
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for args in (("--config", str(config), "--out", str(run)), ("--resume", str(run))):
        started = time.monotonic()
        second = _cli("train", *args)
        assert second.returncode == 2, second.stderr
        assert f"error: {run} is in use" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert time.monotonic() - started < 60  # refused before any data or weights are read
    assert first.poll() is None, "the first run ended before the second writer was tried"
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 3]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_setup, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    (run / ".lock").write_text(
        json.dumps({"pid": int(dead), "host": "h", "since": "", "command": ""})
    )
    Trainer(run_config(tiny_setup, *QUICK, "train.epochs=1"), run).run()
    assert RunDir(run).final.is_file()
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


# -- 3. checkpoints are verified -------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte changed near the end, in the tensor data: the size stays the same
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
@pytest.mark.parametrize("name", ["state.safetensors", "state.json"])
def test_a_damaged_last_checkpoint_is_named_and_never_resumed(finished, tmp_path, how, name):
    run = tmp_path / "run"
    for p in finished.rglob("*"):
        if p.is_file() and p.name != ".lock":
            (run / p.relative_to(finished)).parent.mkdir(parents=True, exist_ok=True)
            (run / p.relative_to(finished)).write_bytes(p.read_bytes())
    _damage(run / "last" / name, how)
    with pytest.raises(CheckpointError, match=rf"{run / 'last' / name} is damaged") as caught:
        Trainer(load_config(run / "config.toml"), run, resume=True)
    assert f"{run}/best/ keeps the best model" in str(caught.value)
    result = _cli("train", "--resume", str(run))
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {run / 'last' / name} is damaged")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
@pytest.mark.parametrize("name", ["model.safetensors", "meta.json", "vocab.txt"])
def test_a_damaged_best_model_is_named(finished, tmp_path, how, name):
    best = tmp_path / "best"
    best.mkdir()
    for p in (finished / "best").iterdir():
        (best / p.name).write_bytes(p.read_bytes())
    _damage(best / name, how)
    with pytest.raises(CheckpointError, match=rf"{best / name} is damaged"):
        load_model_dir(best)


def test_a_model_directory_without_a_manifest_loads_unverified(finished, tmp_path, caplog):
    best = tmp_path / "best"  # as written before manifests existed
    best.mkdir()
    for p in (finished / "best").iterdir():
        if p.name != "manifest.json":
            (best / p.name).write_bytes(p.read_bytes())
    with caplog.at_level(logging.WARNING, logger="minbert"):
        model, _, _ = load_model_dir(best)
    assert "has no manifest.json (written by an older minbert): not verified" in caplog.text
    assert model.tasks == ["sst", "quora", "sts"]


def test_a_checkpoint_lists_its_files_tensors_and_shapes(finished):
    manifest = json.loads((finished / "last" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"state.json", "state.safetensors"}
    tensors = json.loads((finished / "best" / "manifest.json").read_text())["tensors"]
    index = tensors["model.safetensors"]
    weights = load_file(finished / "best" / "model.safetensors")
    assert index == {k: ["F32", list(v.shape)] for k, v in sorted(weights.items())}


# -- 4. all inputs are read before training --------------------------------------------------


def test_a_missing_test_file_is_refused_before_step_1(tiny_setup, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for f in (tiny_setup / "data").iterdir():
        if f.name != "sts-test-student.csv":
            (data / f.name).write_bytes(f.read_bytes())
    steps = []
    monkeypatch.setattr(Trainer, "train_step", lambda self, plan: steps.append(plan))
    with pytest.raises(DataError, match="sts-test-student.csv"):
        Trainer(run_config(tiny_setup, *QUICK, f"data.dir={data}"), tmp_path / "run").run()
    assert steps == []
    assert RunDir(tmp_path / "run").run_files() == []  # nothing of a run was written


# -- 6. signals are honoured everywhere ------------------------------------------------------

STOP_DURING = """
import os, signal, sys
from minbert.cli import main
from minbert.config import load_config
import minbert.{module} as where

original = where.{function}
calls = []

def stop_then_go_on(*args, **kwargs):
    calls.append(1)
    if len(calls) == {call}:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

where.{function} = stop_then_go_on
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "module, function, call, during",
    [
        # the trainer's evaluation of epoch 2, the last one (epoch 1's was call 1)
        ("train.trainer", "evaluate", 2, "during the evaluation of epoch 2"),
        # the final predictions: the second prediction file written
        ("train.callbacks.predictions", "write_predictions", 2, "during the final predictions"),
    ],
)
def test_sigterm_during_the_final_work_stops_and_resumes_without_training(
    finished, tmp_path, module, function, call, during
):
    run = tmp_path / "run"
    script = STOP_DURING.format(module=module, function=function, call=call)
    command = [sys.executable, "-c", script, "train", "--config", str(finished / "config.toml")]
    stopped = subprocess.run(
        [*command, "--out", str(run)], capture_output=True, text=True, timeout=300
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert during in stopped.stderr and f"minbert train --resume {run}" in stopped.stderr
    assert not RunDir(run).final.is_file()
    step = json.loads((run / "last" / "state.json").read_text())["run"]["step"]

    resumed = _cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "train.log").read_text()
    assert f"resumed {run} at step {step}" in log
    assert json.loads((run / "last" / "state.json").read_text())["run"]["step"] == step
    _assert_same_results(finished, run)


def test_a_stop_signal_inside_an_evaluation_interrupts_it(tiny_setup, tmp_path, monkeypatch):
    import minbert.train.trainer as trainer_module

    def evaluate_until_stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the stop must come at once, not after this evaluation
        raise AssertionError("the evaluation went on after SIGTERM")

    monkeypatch.setattr(trainer_module, "evaluate", evaluate_until_stopped)
    trainer = Trainer(run_config(tiny_setup, *QUICK), tmp_path / "run")
    started = time.monotonic()
    with pytest.raises(TrainingInterrupted, match="during the evaluation of epoch 1"):
        trainer.run()
    assert time.monotonic() - started < 25


def test_resume_and_overwrite_together_are_refused(finished):
    with pytest.raises(TrainingError, match="cannot --overwrite"):
        Trainer(run_config(Path(), *QUICK), finished, resume=True, overwrite=True)
