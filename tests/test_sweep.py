"""`minbert sweep`: the statistics against scipy, a sweep of the tiny run (2 arms x 2 seeds)
stopped and resumed to the same table, failures reported, and bad specs refused before
anything runs."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from minbert.experiments.stats import paired, summarise, verdict
from minbert.experiments.sweep import SweepError, read_spec, run_sweep


def test_the_interval_and_the_paired_test_are_scipys():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        x = rng.normal(0.5, 0.02, n)
        s = summarise(list(x))
        low, high = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert (s.low, s.high) == pytest.approx((low, high), abs=1e-12)
        assert s.std == pytest.approx(np.std(x, ddof=1))
        base = rng.normal(0.5, 0.02, n)
        c = paired(dict(enumerate(x)), dict(enumerate(base)))
        assert c.p_value == pytest.approx(stats.ttest_rel(x, base).pvalue, abs=1e-12)
        d = x - base
        low, high = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
        assert (c.mean, c.low, c.high) == pytest.approx((d.mean(), low, high), abs=1e-12)


def test_pairs_are_the_shared_seeds_and_one_value_has_no_interval():
    c = paired({1: 0.5, 2: 0.6, 3: 0.7}, {2: 0.5, 3: 0.5, 4: 0.1})
    assert c.n == 2 and c.mean == pytest.approx(0.15)
    assert paired({1: 0.5}, {2: 0.5}) is None
    one = summarise([0.5])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.std)
    assert verdict(paired({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5})) == "better"  # same shift twice
    assert verdict(paired({1: 0.5, 2: 0.4}, {1: 0.4, 2: 0.5})) == "cannot tell"
    assert verdict(paired({1: 0.1}, {1: 0.0})).startswith("cannot tell")


def _write_spec(path: Path, root: Path, arms: dict[str, list[str]], seeds=(1, 2)) -> Path:
    from tiny_run import tiny_overrides

    budget = [*tiny_overrides(root), "train.tasks=['sst']", "train.epochs=1"]
    lines = [
        "[sweep]",
        f"seeds = {list(seeds)}",
        'baseline = "base"',
        f"set = {json.dumps(budget)}",
    ]
    for name, sets in arms.items():
        lines += [f"[arms.{name}]", f"set = {json.dumps(sets)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


ARMS = {"base": [], "smooth": ["objectives.sst.label_smoothing=0.1"]}


def _metrics(out: Path) -> dict:
    summary = json.loads((out / "sweep.json").read_text())
    return {arm: entry["metrics"] for arm, entry in summary["arms"].items()}


def _sweep_command(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "minbert.cli", "sweep", str(spec), "--out", str(out)]


def test_a_stopped_sweep_resumes_to_the_table_of_an_uninterrupted_one(tiny_setup, tmp_path):
    spec = _write_spec(tmp_path / "spec.toml", tiny_setup, ARMS)
    whole = run_sweep(read_spec(spec), tmp_path / "whole")
    assert whole["failed"] == [] and "stopped" not in whole
    assert sorted(p.name for p in (tmp_path / "whole" / "results").iterdir()) == [
        "base-s1.json",
        "base-s2.json",
        "smooth-s1.json",
        "smooth-s2.json",
    ]
    table = (tmp_path / "whole" / "sweep.md").read_text()
    assert "| smooth | 2/2 |" in table and "p=" in table
    assert (tmp_path / "whole" / "forest.png").stat().st_size > 0

    out = tmp_path / "stopped"
    sweep = subprocess.Popen(_sweep_command(spec, out), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "base-s1" / "final.json").exists():  # the first run finished
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    while not (out / "smooth-s1" / "config.toml").exists():  # the second one started
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(sweep.pid, signal.SIGTERM)
    assert sweep.wait(60) == 128 + signal.SIGTERM, sweep.stderr.read()
    assert not (out / "base-s2").exists()
    again = subprocess.run(_sweep_command(spec, out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert _metrics(out) == _metrics(tmp_path / "whole")
    # and a third time: nothing left to run, the same table
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*/final.json")}
    run_sweep(read_spec(spec), out)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*/final.json")} == before


def test_a_result_copied_from_another_sweep_is_not_run_again(tiny_setup, tmp_path, capsys):
    from minbert.cli import main

    spec = _write_spec(tmp_path / "spec.toml", tiny_setup, ARMS, seeds=[1])
    first, second = tmp_path / "first", tmp_path / "second"
    run_sweep(read_spec(spec), first)
    (second / "results").mkdir(parents=True)
    shutil.copy(first / "results" / "base-s1.json", second / "results")
    summary = run_sweep(read_spec(spec), second)
    assert summary["failed"] == []
    assert not (second / "base-s1").exists() and (second / "smooth-s1" / "final.json").is_file()
    assert _metrics(second) == _metrics(first)
    # --table-only keeps what a run folder finished, too
    (second / "results" / "smooth-s1.json").unlink()
    assert main(["sweep", str(spec), "--out", str(second), "--table-only"]) == 0
    assert "| smooth | 1/1 |" in capsys.readouterr().out


def test_table_only_with_no_finished_run_is_a_clear_error(tiny_setup, tmp_path, capsys):
    # It crashed in matplotlib ("Number of columns must be a positive integer, not 0").
    from minbert.cli import main

    spec = _write_spec(tmp_path / "spec.toml", tiny_setup, ARMS, seeds=[1])
    assert main(["sweep", str(spec), "--out", str(tmp_path / "empty"), "--table-only"]) != 0
    err = capsys.readouterr().err
    assert "nothing to tabulate: no finished run of spec.toml" in err and "Traceback" not in err


def test_a_failed_run_is_reported_and_the_others_go_on(tiny_setup, tmp_path, capsys):
    from minbert.cli import main

    arms = {"base": [], "broken": [f"data.dir={tmp_path / 'no-data'}"]}
    spec = _write_spec(tmp_path / "spec.toml", tiny_setup, arms, seeds=[3])
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "failed: broken-s3" in out and "| base | 1/1 |" in out and "| broken | 0/1 |" in out
    assert "file not found" in (tmp_path / "out" / "broken-s3.out").read_text()


@pytest.mark.parametrize(
    ("spec_text", "message"),
    [
        ("[sweep]\nseeds = [1]\n", "no arms"),
        ("[sweep]\nseeds = []\n[arms.a]\n", "sweep.seeds: give one or more distinct seeds"),
        ("[sweep]\nseeds = [1, 1]\n[arms.a]\n", "distinct seeds"),
        ("[sweep]\nseeds = [1]\nbaseline = 'b'\n[arms.a]\n", "sweep.baseline: 'b' is not an arm"),
        (
            "[sweep]\nseeds = [1]\nconfig = 'no/such.toml'\n[arms.a]\n",
            "arms.a: config file not found",
        ),
        (
            "[sweep]\nseeds = [1]\n[arms.a]\nset = ['train.lrr=1']\n",
            "arms.a: unknown key 'train.lrr'",
        ),
        ("[sweep]\nseeds = [1]\n[arms.a]\nsets = []\n", "arms.a: unknown key(s) ['sets']"),
        ("[sweep]\nseed = [1]\n[arms.a]\n", "sweep: unknown key(s) ['seed']"),
        ("[sweep]\nseeds = [1]\n[arms.'a b']\n", "arms.a b: a name of letters"),
        ("[sweep\n", "not a TOML file"),
        (
            "[sweep]\nseeds = [1, 2]\n[arms.a]\n[arms.e]\nensemble = 'b'\n",
            "arms.e.ensemble: 'b' is not a trained arm; trained arms: ['a']",
        ),
        (
            "[sweep]\nseeds = [1, 2]\n[arms.a]\n[arms.e]\nensemble = 'a'\n[arms.s]\nsoup = 'e'\n",
            "arms.s.soup: 'e' is not a trained arm",
        ),
        (
            "[sweep]\nseeds = [1, 2]\n[arms.a]\n[arms.e]\nensemble = 'a'\nset = []\n",
            "arms.e: ensemble = 'ARM' alone",
        ),
        ("[sweep]\nseeds = [1]\n[arms.a]\n[arms.e]\nsoup = 'a'\n", "arms.e: a soup of one seed"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_key(tmp_path, spec_text, message):
    path = tmp_path / "spec.toml"
    path.write_text(spec_text)
    with pytest.raises(SweepError, match=f"{re.escape(str(path))}: .*{re.escape(message)}"):
        read_spec(path)


def test_an_ensemble_arm_combines_every_seeds_run_and_pairs_with_each(tiny_setup, tmp_path):
    from minbert.experiments.ensemble import run_ensemble

    spec_path = _write_spec(tmp_path / "spec.toml", tiny_setup, {"base": []})
    with spec_path.open("a") as f:
        f.write("[arms.ens]\nensemble = 'base'\n[arms.soup]\nsoup = 'base'\n")
    spec, out = read_spec(spec_path), tmp_path / "out"
    assert [(arm.name, seed) for arm, seed in spec.runs()] == [("base", 1), ("base", 2)]
    assert run_sweep(spec, out)["failed"] == []
    kept = {p.stem: json.loads(p.read_text()) for p in (out / "results").iterdir()}
    assert sorted(kept) == ["base-s1", "base-s2", "ens-s1", "ens-s2", "soup-s1", "soup-s2"]
    check = run_ensemble([out / "base-s1", out / "base-s2"], tmp_path / "check", soup=True)
    for seed in (1, 2):
        assert kept[f"ens-s{seed}"]["dev"] == pytest.approx(check["dev"], abs=1e-9)
        assert kept[f"soup-s{seed}"]["dev"] == pytest.approx(check["soup"]["dev"], abs=1e-9)
    metric = "sst_accuracy"
    change = _metrics(out)["ens"][metric]["paired"]["mean"]
    members = [kept[f"base-s{s}"]["dev"][metric] for s in (1, 2)]
    assert change == pytest.approx(check["dev"][metric] - np.mean(members), abs=1e-12)
    assert "| ens | 2/2 |" in (out / "sweep.md").read_text()
    # again: nothing trained or combined a second time
    combined = (out / "base-combined" / "ensemble.json").stat().st_mtime_ns
    for name in ("ens-s1.json", "soup-s2.json"):
        (out / "results" / name).unlink()  # a lost result is made again from the folder
    run_sweep(spec, out)
    assert (out / "base-combined" / "ensemble.json").stat().st_mtime_ns == combined
    assert json.loads((out / "results" / "ens-s1.json").read_text()) == kept["ens-s1"]


def test_an_ensemble_that_fails_is_reported_and_a_soup_added_later_is_made(
    tiny_setup, tmp_path, monkeypatch
):
    from minbert.experiments import ensemble

    spec_path = _write_spec(tmp_path / "spec.toml", tiny_setup, {"base": []})
    with spec_path.open("a") as f:
        f.write("[arms.ens]\nensemble = 'base'\n")
    out, real = tmp_path / "out", ensemble.run_ensemble

    def refuse(*args, **kwargs):
        raise ensemble.EnsembleError("refused for the test")

    monkeypatch.setattr(ensemble, "run_ensemble", refuse)
    summary = run_sweep(read_spec(spec_path), out)
    assert summary["failed"] == ["ens"] and "| ens | 0/2 |" in (out / "sweep.md").read_text()
    monkeypatch.setattr(ensemble, "run_ensemble", real)
    assert run_sweep(read_spec(spec_path), out)["failed"] == []
    assert "soup" not in json.loads((out / "base-combined" / "ensemble.json").read_text())
    with spec_path.open("a") as f:
        f.write("[arms.soup]\nsoup = 'base'\n")
    run_sweep(read_spec(spec_path), out)
    assert "soup" in json.loads((out / "base-combined" / "ensemble.json").read_text())
    assert (out / "results" / "soup-s2.json").is_file()


def test_reading_a_spec_does_not_warn_once_per_arm(tmp_path, caplog):
    # `minbert claims` printed "heads.quora, heads.sts: not used" for every arm of every
    # SST-only spec it read; the run itself still says so in its own log.
    path = tmp_path / "spec.toml"
    budget = json.dumps(["train.tasks=['sst']", "train.task_weights={}"])
    path.write_text(
        f"[sweep]\nseeds = [1]\nconfig = 'configs/default.toml'\nset = {budget}\n[arms.a]\n[arms.b]\n"
    )
    with caplog.at_level(logging.WARNING):
        read_spec(path)
    assert not [r for r in caplog.records if "not used" in r.getMessage()]
    assert logging.getLogger("minbert.config").level == logging.NOTSET


def test_too_many_jobs_and_a_folder_of_another_run_are_refused_before_running(tiny_setup, tmp_path):
    spec = read_spec(_write_spec(tmp_path / "spec.toml", tiny_setup, ARMS, seeds=[4]))
    with pytest.raises(SweepError, match="--jobs 999: between 1 and"):
        run_sweep(spec, tmp_path / "out", jobs=999)
    other = read_spec(
        _write_spec(tmp_path / "other.toml", tiny_setup, {"base": ["train.lr=1e-3"]}, seeds=[4])
    )
    run_sweep(other, tmp_path / "out")
    with pytest.raises(SweepError, match="base-s4: holds a run whose config is not arm 'base'"):
        run_sweep(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "smooth-s4").exists()  # nothing ran


# -- minbert search ---------------------------------------------------------------------------


def _write_search_spec(path: Path, root: Path, space: str) -> Path:
    from tiny_run import tiny_overrides

    budget = [*tiny_overrides(root), "train.tasks=['sst']", "train.epochs=2"]
    path.write_text(
        "[search]\n"
        f"set = {json.dumps(budget)}\n"
        'metric = "sst_accuracy"\nseed = 3\n\n[space]\n' + space
    )
    return path


SPACE = (
    '"train.lr" = {type = "log-float", low = 1e-4, high = 1e-2}\n'
    '"train.batch_size" = {type = "int", low = 4, high = 16, step = 4}\n'
    '"objectives.sst.label_smoothing" = {type = "categorical", choices = [0.0, 0.1]}\n'
)


def test_a_search_writes_a_study_optuna_reopens_and_a_best_config_train_accepts(
    tiny_setup, tmp_path
):
    import optuna

    from minbert.config import load_config
    from minbert.experiments.search import read_search_spec, run_search

    spec = read_search_spec(_write_search_spec(tmp_path / "search.toml", tiny_setup, SPACE))
    best = run_search(spec, tmp_path / "out", trials=3)
    study = optuna.load_study(
        study_name="minbert", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 3 and study.best_trial.number == best["best_trial"]
    config = load_config(tmp_path / "out" / "best.toml")
    assert config.train.lr == pytest.approx(study.best_trial.params["train.lr"])
    assert config.train.batch_size == study.best_trial.params["train.batch_size"]
    assert (tmp_path / "out" / "trials.md").read_text().count("| complete |") + (
        tmp_path / "out" / "trials.md"
    ).read_text().count("| pruned |") == 3
    assert (tmp_path / "out" / "history.png").stat().st_size > 0


def test_a_killed_search_resumes_to_exactly_n_trials(tiny_setup, tmp_path):
    import optuna

    spec = _write_search_spec(tmp_path / "search.toml", tiny_setup, SPACE)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "minbert.cli",
        "search",
        str(spec),
        "--trials",
        "3",
        "--out",
        str(out),
    ]
    search = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "trial-1" / "config.toml").exists():  # the first trial done, the second on
        assert search.poll() is None, search.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    search.kill()  # SIGKILL: trial 1 stays RUNNING in the study
    search.wait()
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="minbert", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    assert states[1] == "FAIL"  # the killed trial, not counted


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("", "the search space is empty"),
        (
            '"train.lr" = {type = "categorical", choices = [1e-3]}\n',
            "space.train.lr.choices: give two or more",
        ),
        (
            '"train.lr" = {type = "float", low = 1e-3, high = 1e-4}\n',
            "low (0.001) must be below high",
        ),
        ('"train.lr" = {type = "log-float", low = 0, high = 1e-4}\n', "must be above 0"),
        ('"train.lr" = {type = "uniform", low = 0, high = 1}\n', "space.train.lr.type: 'uniform'"),
        ('"train.lrr" = {type = "float", low = 0, high = 1}\n', "unknown key 'train.lrr'"),
        ('"train.epochs" = {type = "int", low = 0, high = 3}\n', "train.epochs"),
    ],
)
def test_a_bad_search_spec_is_refused_before_anything_runs(tiny_setup, tmp_path, space, message):
    from minbert.experiments.search import SearchError, read_search_spec

    path = _write_search_spec(tmp_path / "search.toml", tiny_setup, space)
    with pytest.raises(SearchError, match=re.escape(message)):
        read_search_spec(path)
    assert list(tmp_path.iterdir()) == [path]


# -- minbert ensemble -------------------------------------------------------------------------


def test_an_ensemble_or_soup_of_one_run_twice_is_that_run(finished_tiny_run, tmp_path, capsys):
    import shutil

    from minbert.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(finished_tiny_run, copy)
    out = tmp_path / "ens"
    assert main(["ensemble", str(finished_tiny_run), str(copy), "--out", str(out), "--soup"]) == 0
    summary = json.loads((out / "ensemble.json").read_text())
    final = json.loads((finished_tiny_run / "final.json").read_text())
    assert summary["dev"] == pytest.approx(final["dev"], abs=1e-9)
    assert summary["soup"]["dev"] == pytest.approx(final["dev"], abs=1e-9)
    for path in (out / "predictions").iterdir():
        ours = path.read_text().splitlines()
        ids = [line.split(",")[0] for line in ours[1:]]
        assert len(ids) == len(set(ids))  # every id once
        theirs = (finished_tiny_run / "predictions" / path.name).read_text().splitlines()
        assert [line.split(",")[0] for line in theirs] == [line.split(",")[0] for line in ours]
        if not path.name.startswith("sts"):  # classes and 0/1: the same predictions
            assert ours == theirs
    assert (out / "soup" / "model.safetensors").is_file()
    assert main(["ensemble", str(finished_tiny_run), str(copy), "--out", str(out)]) == 2
    assert "holds an ensemble" in capsys.readouterr().err


def test_an_ensemble_of_runs_of_different_tasks_is_refused(finished_tiny_run, tiny_setup, tmp_path):
    from tiny_run import QUICK, run_config

    from minbert.experiments.ensemble import EnsembleError, run_ensemble
    from minbert.train.trainer import Trainer

    Trainer(run_config(tiny_setup, *QUICK, "train.tasks=['sst']"), tmp_path / "sst").run()
    with pytest.raises(EnsembleError, match="trained \\['sst'\\].*the same tasks"):
        run_ensemble([finished_tiny_run, tmp_path / "sst"], tmp_path / "ens")
    with pytest.raises(EnsembleError, match="two or more runs"):
        run_ensemble([finished_tiny_run], tmp_path / "ens")


def test_the_ensembles_threshold_is_fitted_on_the_rows_every_member_held_out(
    tiny_setup, tmp_path, monkeypatch
):
    import shutil

    from tiny_run import QUICK, run_config

    from minbert.experiments import ensemble
    from minbert.train.trainer import Trainer

    config = run_config(tiny_setup, *QUICK, "train.tasks=['quora']", "heads.quora.calibrate=0.3")
    Trainer(config, tmp_path / "a").run()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    summary = ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "few")
    assert summary["thresholds"]["quora"]["fitted_on"] == 0  # 12 shared rows: too few
    monkeypatch.setattr(ensemble, "MIN_SHARED_HELDOUT", 5)
    summary = ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "fitted")
    fitted = summary["thresholds"]["quora"]
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    best = json.loads((tmp_path / "a" / "final.json").read_text())["best_epoch"]
    own = records[best - 1]["calibration"]["quora"]
    assert fitted["fitted_on"] == own["heldout_rows"] == 12
    assert fitted["heldout_accuracy"] == pytest.approx(own["heldout_accuracy"], abs=1e-4)


# -- minbert claims ---------------------------------------------------------------------------


def test_the_claims_table_gives_each_claim_its_interval_and_verdict(tiny_setup, tmp_path):
    from minbert.experiments.claims import claims_table

    specs, runs = tmp_path / "claims", tmp_path / "runs"
    specs.mkdir()
    arms = {"base": [], "up": [], "down": [], "mixed": [], "missing": []}
    path = _write_spec(specs / "c.toml", tiny_setup, arms, seeds=(1, 2, 3))
    path.write_text(
        path.read_text() + '[claim]\ntext = "X helps"\nmetric = "sst_accuracy"\nbetter = "higher"\n'
    )
    offsets = {"base": [0, 0, 0], "up": [0.02, 0.03, 0.025], "down": [-0.02, -0.01, -0.015]}
    offsets["mixed"] = [0.02, -0.02, 0.001]
    (runs / "c" / "results").mkdir(parents=True)
    for arm, deltas in offsets.items():
        for seed, delta in zip((1, 2, 3), deltas, strict=True):
            result = {"arm": arm, "seed": seed, "dev": {"sst_accuracy": 0.5 + seed / 100 + delta}}
            (runs / "c" / "results" / f"{arm}-s{seed}.json").write_text(json.dumps(result))
    rows = {
        line.split("|")[3].strip(): line
        for line in claims_table(specs, runs).splitlines()
        if "` vs `" in line
    }
    assert rows["`up` vs `base`"].endswith("| holds |") and "+0.0250 [" in rows["`up` vs `base`"]
    assert rows["`down` vs `base`"].endswith("| does not hold |")
    assert rows["`mixed` vs `base`"].endswith("| cannot tell at this budget |")
    assert rows["`missing` vs `base`"].endswith("| not measured yet |")
    assert rows["`up` vs `base`"].startswith("| X helps |")
    assert "; on " not in rows["`up` vs `base`"]  # results kept before runs named machines
    # a claim's setting names the machines its runs were measured on
    record = {"cpu": "AMD EPYC", "cpu_extensions": "AVX2", "emulated": False, "threads": 1}
    up = runs / "c" / "results" / "up-s1.json"
    up.write_text(json.dumps(json.loads(up.read_text()) | {"machine": record}))
    row = next(r for r in claims_table(specs, runs).splitlines() if "`up` vs `base`" in r)
    assert "; on AMD EPYC, AVX2 |" in row
    up.write_text(
        json.dumps({k: v for k, v in json.loads(up.read_text()).items() if k != "machine"})
    )
    # the results used are kept beside the table: a clone without run folders remakes it
    from minbert.experiments.claims import write_claims

    table = write_claims(specs, runs, tmp_path / "CLAIMS.md", tmp_path / "kept")
    assert (tmp_path / "kept" / "c" / "results" / "up-s2.json").is_file()
    assert claims_table(specs, tmp_path / "no-runs", tmp_path / "kept") == table
    path.write_text(path.read_text() + 'compare = [["up", "down"], "mixed"]\n')
    rows = [line for line in claims_table(specs, runs).splitlines() if "` vs `" in line]
    assert len(rows) == 2 and "`up` vs `down`" in rows[0] and rows[0].endswith("| holds |")
    assert "`mixed` vs `base`" in rows[1]
    path.write_text(path.read_text().replace('"mixed"]', '"nope"]'))
    with pytest.raises(SweepError, match="claim.compare: 'nope'"):
        claims_table(specs, runs)


def test_every_shipped_claim_spec_loads():
    from minbert.experiments.sweep import read_spec

    root = Path(__file__).resolve().parents[1]
    specs = sorted((root / "configs" / "claims").glob("*.toml"))
    assert len(specs) >= 10
    for path in specs:
        spec = read_spec(path)
        assert spec.claim["metric"] and len(spec.seeds) >= 3


def test_every_shipped_lever_spec_loads():
    from minbert.experiments.sweep import read_spec

    specs = sorted((Path(__file__).resolve().parents[1] / "configs" / "levers").glob("*.toml"))
    assert specs
    for path in specs:
        spec = read_spec(path)
        assert len(spec.seeds) >= 3
        for arm in spec.arms.values():
            arm.config([f"train.seed={spec.seeds[0]}"])  # every override is a valid key
