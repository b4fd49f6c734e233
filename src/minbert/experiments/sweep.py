"""``minbert sweep SPEC.toml --out DIR``: every arm of a spec on every seed, resumable, then
the table of means, intervals and paired differences against the baseline arm.

A spec::

    [sweep]
    config = "configs/default.toml"    # the arms' config (an arm may name its own)
    seeds = [11711, 1, 2]
    baseline = "base"                  # the arm the others are paired with
    set = ["train.max_steps=200"]      # overrides for every arm (the budget)

    [arms.base]
    [arms.eda]
    set = ["augment.sst.synonym=0.1"]
    [arms.base-ensemble]
    ensemble = "base"                  # the mean of arm base's seeds' predictions
    [arms.base-soup]
    soup = "base"                      # their weights averaged

An ``ensemble`` or ``soup`` arm trains nothing: once every seed of the arm it names has
finished, ``minbert ensemble`` combines them (into ``DIR/<arm>-combined/``), and its one
result is kept for each seed, so that the table pairs the combination with each member.

Run ``<arm>-s<seed>`` goes to ``DIR/<arm>-s<seed>/``. A finished run is kept (its config must
be the arm's, or the sweep stops), a stopped one is resumed, a failed one is reported and
the others go on. Each finished run's dev scores are copied to ``DIR/results/`` so that
``DIR/sweep.md``, ``sweep.json`` and ``forest.png`` can be made again without the run folders
(``--table-only``), and a result copied there from another sweep (a baseline both share) is
not run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from minbert import machine
from minbert.config import Config, load_config
from minbert.errors import UserError
from minbert.experiments import read_toml_spec
from minbert.experiments.stats import Paired, Summary, paired, summarise
from minbert.run.atomic import write_atomic
from minbert.run.layout import RunDir

log = logging.getLogger(__name__)
# Keys that say how a run is computed, not what it computes: a finished run still counts
# when only these differ from its arm (another --jobs split the cores differently).
HOW_KEYS = {"threads", "progress"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SweepError(UserError, ValueError):
    """A sweep spec or output folder that cannot be used as it is."""


COMBINATIONS = ("ensemble", "soup")


@dataclass(frozen=True)
class Arm:
    name: str
    config_path: str | None
    overrides: list[str]
    combines: str | None = None  # an ensemble or soup arm: the trained arm it combines
    how: str = ""  # "ensemble" or "soup"

    def config(self, extra: list[str] = ()) -> Config:
        """The arm's config, checked without its warnings (task tables the arm does not
        train): those are the run's to log, not once per arm each time the spec is read."""
        return load_config(self.config_path, [*self.overrides, *extra], warn_unused=False)


@dataclass(frozen=True)
class Spec:
    path: Path
    seeds: list[int]
    baseline: str
    arms: dict[str, Arm]
    metrics: list[str] = field(default_factory=list)  # empty: every dev metric
    claim: dict = field(default_factory=dict)  # [claim]: what a report says (claims.py)

    def runs(self) -> list[tuple[Arm, int]]:
        """Every (trained arm, seed), seed-major: the baseline and the arms of a seed run
        together, so a sweep stopped half-way has complete pairs."""
        trained = [arm for arm in self.arms.values() if arm.combines is None]
        return [(arm, seed) for seed in self.seeds for arm in trained]

    def combinations(self) -> dict[str, list[Arm]]:
        """Trained arm -> the ensemble and soup arms that combine its seeds."""
        found: dict[str, list[Arm]] = {}
        for arm in self.arms.values():
            if arm.combines is not None:
                found.setdefault(arm.combines, []).append(arm)
        return found


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def _list_of(value, kind, key: str, path: Path) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise SweepError(f"{path}: {key}: expected a list of {kind.__name__}, got {value!r}")
    return value


def read_spec(path: str | Path) -> Spec:
    """The spec, checked: every arm's config loads (missing files and unknown keys are
    errors naming the arm) before anything runs."""
    path = Path(path)
    data = read_toml_spec(path, {"sweep", "arms", "claim"}, SweepError, "sweep")
    claim = data.get("claim", {})
    claim_keys = {"text", "source", "metric", "better", "budget", "compare"}
    if bad := set(claim) - claim_keys:
        raise SweepError(
            f"{path}: claim: unknown key(s) {sorted(bad)}; allowed {sorted(claim_keys)}"
        )
    if claim.get("better", "higher") not in ("higher", "lower"):
        raise SweepError(f"{path}: claim.better: 'higher' or 'lower', got {claim['better']!r}")
    sweep = data.get("sweep", {})
    allowed = {"config", "seeds", "baseline", "set", "metrics"}
    if bad := set(sweep) - allowed:
        raise SweepError(f"{path}: sweep: unknown key(s) {sorted(bad)}; allowed {sorted(allowed)}")
    seeds = _list_of(sweep.get("seeds", []), int, "sweep.seeds", path)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"{path}: sweep.seeds: give one or more distinct seeds, got {seeds}")
    common = _list_of(sweep.get("set", []), str, "sweep.set", path)
    default_config = sweep.get("config")
    arms_table = data.get("arms", {})
    if not isinstance(arms_table, dict) or not arms_table:
        raise SweepError(f"{path}: no arms; add [arms.<name>] tables")
    arms = {}
    for name, table in arms_table.items():
        if not NAME.fullmatch(name):
            raise SweepError(f"{path}: arms.{name}: a name of letters, digits, '_', '-', '.'")
        if bad := set(table) - {"config", "set", *COMBINATIONS}:
            raise SweepError(
                f"{path}: arms.{name}: unknown key(s) {sorted(bad)}; allowed config, set, "
                "ensemble, soup"
            )
        if how := [k for k in COMBINATIONS if k in table]:
            of = table[how[0]]
            if len(table) != 1 or not isinstance(of, str):
                raise SweepError(
                    f"{path}: arms.{name}: {how[0]} = 'ARM' alone (it trains nothing: "
                    "no config, set or second combination)"
                )
            arms[name] = Arm(name, None, [], combines=of, how=how[0])
            continue
        config_path = table.get("config", default_config)  # relative: to the current folder
        overrides = [*common, *_list_of(table.get("set", []), str, f"arms.{name}.set", path)]
        arm = Arm(name, config_path, overrides)
        try:
            arm.config(["train.seed=0"])
        except UserError as exc:
            raise SweepError(f"{path}: arms.{name}: {exc}") from None
        arms[name] = arm
    for arm in arms.values():
        if arm.combines is not None and (
            arm.combines not in arms or arms[arm.combines].combines is not None
        ):
            trained = [a.name for a in arms.values() if a.combines is None]
            raise SweepError(
                f"{path}: arms.{arm.name}.{arm.how}: {arm.combines!r} is not a trained arm; "
                f"trained arms: {trained}"
            )
        if arm.combines is not None and len(seeds) < 2:
            raise SweepError(f"{path}: arms.{arm.name}: a {arm.how} of one seed; give two or more")
    baseline = sweep.get("baseline", next(iter(arms)))
    if baseline not in arms:
        raise SweepError(f"{path}: sweep.baseline: {baseline!r} is not an arm; arms: {list(arms)}")
    metrics = _list_of(sweep.get("metrics", []), str, "sweep.metrics", path)
    if claim and "metric" not in claim:
        raise SweepError(f"{path}: claim.metric: name the dev metric the claim is about")
    for pair in claim.get("compare", []):
        names = [pair, baseline] if isinstance(pair, str) else pair
        if (
            not isinstance(names, list)
            or len(names) != 2
            or names[0] == names[1]
            or any(n not in arms for n in names)
        ):
            raise SweepError(
                f"{path}: claim.compare: {pair!r}: an arm, or [arm, other arm], of {list(arms)}"
            )
    return Spec(path, seeds, baseline, arms, metrics, claim)


# -- running -------------------------------------------------------------------------------------


def _comparable(config: Config) -> dict:
    data = config.to_dict()
    data["train"] = {k: v for k, v in data["train"].items() if k not in HOW_KEYS}
    return data


def _state(out: Path, arm: Arm, seed: int) -> str:
    """``done``, ``stopped`` (resumable) or ``new``; a folder holding another run is an error.
    A run with no folder whose result is kept in ``DIR/results`` is done: results copied from
    an earlier sweep (a shared baseline arm) are not trained again."""
    run = RunDir(out / run_name(arm.name, seed))
    if not run.is_run():
        return "done" if _kept(out, arm.name, seed).is_file() else "new"
    saved = load_config(run.config)
    if _comparable(saved) != _comparable(arm.config([f"train.seed={seed}"])):
        raise SweepError(
            f"{run.root}: holds a run whose config is not arm {arm.name!r} on seed {seed} "
            "(the spec changed?); move it away or give another --out"
        )
    return "done" if run.final.is_file() else "stopped"


def _command(arm: Arm, seed: int, out: Path, state: str, threads: int) -> list[str]:
    folder = str(out / run_name(arm.name, seed))
    base = [sys.executable, "-m", "minbert.cli", "train"]
    if state == "stopped":
        return [*base, "--resume", folder]
    command = [*base, "--out", folder]
    if arm.config_path:
        command += ["--config", arm.config_path]
    sets = [
        *arm.overrides,
        f"train.seed={seed}",
        f"train.threads={threads}",
        "train.progress=false",
    ]
    for text in sets:
        command += ["--set", text]
    return command


def run_sweep(spec: Spec, out: str | Path, jobs: int = 1) -> dict:
    """Run what is not finished (``jobs`` at a time, the cores split between them), collect
    the results and write the table. Returns the summary (``failed``: the runs that failed)."""
    out = Path(out)
    cores = os.cpu_count() or 1
    if not 1 <= jobs <= cores:
        raise SweepError(f"--jobs {jobs}: between 1 and this machine's {cores} cores")
    pending = []
    for arm, seed in spec.runs():
        state = _state(out, arm, seed)  # every folder checked before anything runs
        if state != "done":
            pending.append((arm, seed, state))
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, cores // jobs)
    failed: list[str] = []
    running: dict[str, subprocess.Popen] = {}
    stop = {"signal": None}

    def forward(signum, frame):  # children checkpoint and stop; resumed next time
        stop["signal"] = signum
        for process in running.values():
            process.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    total, started = len(spec.runs()), time.monotonic()
    log.info("sweep %s: %d runs, %d to do, %d at a time", spec.path, total, len(pending), jobs)
    try:
        while (pending or running) and stop["signal"] is None:
            while pending and len(running) < jobs and stop["signal"] is None:
                arm, seed, state = pending.pop(0)
                name = run_name(arm.name, seed)
                with (out / f"{name}.out").open("ab") as sink:
                    running[name] = subprocess.Popen(  # own session: one SIGTERM from us only
                        _command(arm, seed, out, state, threads),
                        stdout=sink,
                        stderr=sink,
                        start_new_session=True,
                    )
                log.info("started %s (%s)", name, "resumed" if state == "stopped" else "new")
            time.sleep(0.2)
            for name, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode == 0:
                    log.info(
                        "finished %s (%.0f s into the sweep)", name, time.monotonic() - started
                    )
                elif stop["signal"] is None:
                    failed.append(name)
                    log.error(
                        "%s failed (exit %d): see %s", name, process.returncode, out / f"{name}.out"
                    )
        for process in running.values():
            process.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    collect(spec, out)
    if stop["signal"] is None:
        failed += combine(spec, out)
    summary = write_tables(spec, out)
    summary["failed"] = failed
    if stop["signal"] is not None:
        summary["stopped"] = signal.Signals(stop["signal"]).name
    return summary


def _kept(out: Path, arm: str, seed: int) -> Path:
    return out / "results" / f"{run_name(arm, seed)}.json"


def collect(spec: Spec, out: Path) -> None:
    """Copy every finished run's dev scores and timing to ``DIR/results/<run>.json``."""
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    for arm, seed in spec.runs():
        run = RunDir(out / run_name(arm.name, seed))
        if not run.final.is_file():
            continue
        final = json.loads(run.final.read_text(encoding="utf-8"))
        kept = {
            "arm": arm.name,
            "seed": seed,
            "dev": final["dev"],
            "best_epoch": final.get("best_epoch"),
            "train_wall_seconds": final.get("train_wall_seconds"),
            "machine": final.get("machine"),
        }
        write_atomic(_kept(out, arm.name, seed), json.dumps(kept, indent=1) + "\n")


def combine(spec: Spec, out: Path) -> list[str]:
    """Each ensemble and soup arm's result, once every seed of the arm it combines has a
    finished run folder; kept for every seed (one combination, paired with each member).
    Returns the combination arms that failed."""
    from minbert.experiments.ensemble import run_ensemble

    failed = []
    for of, arms in spec.combinations().items():
        if all(_kept(out, arm.name, seed).is_file() for arm in arms for seed in spec.seeds):
            continue
        members = [RunDir(out / run_name(of, seed)) for seed in spec.seeds]
        if missing := [m.root.name for m in members if not m.final.is_file()]:
            log.warning(
                "%s: not combined, the run folders of %s are not finished", arms[0].name, missing
            )
            continue
        folder, soup = out / f"{of}-combined", any(a.how == "soup" for a in arms)
        summary = {}
        if (folder / "ensemble.json").is_file():  # combined before; the members are kept
            summary = json.loads((folder / "ensemble.json").read_text(encoding="utf-8"))
        if not summary or (soup and "soup" not in summary):
            log.info("combining the %d runs of arm %s into %s", len(members), of, folder)
            try:
                summary = run_ensemble([m.root for m in members], folder, soup, overwrite=True)
            except UserError as exc:
                log.error("%s: %s", ", ".join(a.name for a in arms), exc)
                failed += [a.name for a in arms]
                continue
        final = json.loads(members[0].final.read_text(encoding="utf-8"))
        for arm in arms:
            dev = summary["soup"]["dev"] if arm.how == "soup" else summary["dev"]
            for seed in spec.seeds:
                kept = {
                    "arm": arm.name,
                    "seed": seed,
                    "dev": dev,
                    "combines": [m.root.name for m in members],
                    "combine_wall_seconds": summary.get("wall_seconds"),
                    "machine": final.get("machine"),
                }
                write_atomic(_kept(out, arm.name, seed), json.dumps(kept, indent=1) + "\n")
    return failed


# -- the table -----------------------------------------------------------------------------------


def read_results(spec: Spec, out: Path) -> dict[str, dict[int, dict]]:
    """arm -> seed -> kept result, for the spec's arms and seeds found in ``DIR/results``."""
    found: dict[str, dict[int, dict]] = {name: {} for name in spec.arms}
    for seed in spec.seeds:
        for name in spec.arms:
            path = _kept(out, name, seed)
            if path.is_file():
                found[name][seed] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _fmt(x: float, digits: int = 4, sign: bool = False) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _cell(s: Summary) -> str:
    if s.n < 2:
        return f"{_fmt(s.mean)} (n=1)"
    return f"{_fmt(s.mean)} ± {_fmt(s.std)} [{_fmt(s.low)}, {_fmt(s.high)}]"


def _change(c: Paired | None) -> str:
    if c is None:
        return "no shared seed"
    if c.n < 2:
        return f"{_fmt(c.mean, sign=True)} (1 seed)"
    return f"{_fmt(c.mean, sign=True)} [{_fmt(c.low, sign=True)}, {_fmt(c.high, sign=True)}], p={c.p_value:.3f}"


def write_tables(spec: Spec, out: Path) -> dict:
    """``sweep.json``, ``sweep.md`` and ``forest.png`` from the kept results."""
    results = read_results(spec, out)
    if not any(results.values()):
        raise SweepError(
            f"nothing to tabulate: no finished run of {spec.path.name} in {out / 'results'}"
            + ("" if (out / "results").is_dir() else " (that folder does not exist)")
        )
    metrics = spec.metrics or sorted(
        {m for runs in results.values() for r in runs.values() for m in r["dev"]}
    )
    scores = {
        arm: {m: {s: r["dev"][m] for s, r in runs.items() if m in r["dev"]} for m in metrics}
        for arm, runs in results.items()
    }
    base = scores[spec.baseline]
    summary: dict = {
        "spec": str(spec.path),
        "baseline": spec.baseline,
        "seeds": spec.seeds,
        "arms": {},
    }
    rows, changes = [], []
    for arm, by_metric in scores.items():
        entry: dict = {"runs": sorted(results[arm]), "metrics": {}}
        cells, deltas = [], []
        for m in metrics:
            values = by_metric[m]
            s = summarise(list(values.values())) if values else None
            c = paired(values, base[m]) if arm != spec.baseline and values else None
            entry["metrics"][m] = {
                "values": {str(k): v for k, v in values.items()},
                "summary": None if s is None else s.__dict__,
                "paired": None if c is None else c.__dict__,
            }
            cells.append("–" if s is None else _cell(s))
            deltas.append(_change(c))
        walls = [
            r["train_wall_seconds"] for r in results[arm].values() if r.get("train_wall_seconds")
        ]
        entry["train_wall_seconds"] = walls
        summary["arms"][arm] = entry
        done = f"{len(results[arm])}/{len(spec.seeds)}"
        wall = f"{min(walls):.0f}–{max(walls):.0f}" if walls else "–"
        rows.append(f"| {arm} | {done} | " + " | ".join(cells) + f" | {wall} |")
        if arm != spec.baseline:
            changes.append(f"| {arm} | " + " | ".join(deltas) + " |")
    head = " | ".join(metrics)
    lines = [
        f"# Sweep {spec.path.name}",
        "",
        f"Seeds {', '.join(map(str, spec.seeds))}; baseline `{spec.baseline}`. Each cell: mean ± "
        "std over seeds [95% t-interval of the mean].",
        "",
        f"| arm | runs | {head} | train s per run |",
        "|---|---|" + "---|" * (len(metrics) + 1),
        *rows,
        "",
        *_machines_line(results),
        f"Paired change against `{spec.baseline}` (same seeds): mean [95% t-interval], "
        "two-sided paired t-test.",
        "",
        f"| arm | {head} |",
        "|---|" + "---|" * len(metrics),
        *changes,
        "",
    ]
    write_atomic(out / "sweep.md", "\n".join(lines))
    write_atomic(out / "sweep.json", json.dumps(summary, indent=1) + "\n")
    _forest(summary, metrics, out / "forest.png")
    return summary


def _machines_line(results: dict[str, dict[int, dict]]) -> list[str]:
    """Where the runs' times were measured: wall times of different machines do not compare."""
    counts = Counter(
        machine.label(r["machine"]) if r.get("machine") else "not recorded"
        for runs in results.values()
        for r in runs.values()
    )
    if set(counts) <= {"not recorded"}:
        return []
    text = "; ".join(f"{name} ({n} run{'s' * (n != 1)})" for name, n in counts.most_common())
    return [f"Machines: {text}.", ""]


def _forest(summary: dict, metrics: list[str], path: Path) -> None:
    """Each arm's paired change against the baseline with its interval, one panel a metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in summary["arms"] if a != summary["baseline"]]
    if not arms:
        return
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics), 0.5 * len(arms) + 1.4), squeeze=False
    )
    for ax, m in zip(axes[0], metrics, strict=True):
        for y, arm in enumerate(arms):
            c = summary["arms"][arm]["metrics"][m]["paired"]
            if c is None:
                continue
            ax.plot([c["mean"]], [y], "o", color="C0")
            if not math.isnan(c["low"]):
                ax.plot([c["low"], c["high"]], [y, y], "-", color="C0")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(arms)), arms if ax is axes[0][0] else [""] * len(arms))
        ax.set_title(m, fontsize=9)
        ax.invert_yaxis()
    fig.suptitle(f"paired change vs {summary['baseline']} (95% interval)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
