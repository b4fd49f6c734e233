"""``minbert search SPEC.toml --trials N --out DIR``: hyper-parameter search with Optuna (TPE
sampler, median pruner fed after every epoch), its study stored in ``DIR/study.db`` (SQLite)
so that a killed search resumes where it stopped and several processes can share it.

A spec::

    [search]
    config = "configs/default.toml"
    set = ["train.max_steps=300"]       # the budget of every trial
    metric = "overall_leaderboard"      # a dev metric of the best epoch, maximised
    seed = 0                            # the sampler's
    pruner = "median"                   # or "none"

    [space]
    "train.lr" = {type = "log-float", low = 1e-5, high = 1e-4}
    "heads.sst.dropout" = {type = "float", low = 0.0, high = 0.3}
    "train.batch_size" = {type = "int", low = 16, high = 64, step = 16}
    "train.schedule" = {type = "categorical", choices = ["round_robin", "interleaved"]}

Trial k trains in ``DIR/trial-k/``. At the end: ``DIR/best.toml`` (the best trial's whole
config, for ``minbert train --config``), ``DIR/trials.md`` and ``DIR/history.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from minbert.config import Config, load_config, selectable_metrics
from minbert.errors import UserError
from minbert.experiments import read_toml_spec
from minbert.run.atomic import write_atomic
from minbert.run.layout import RunDir
from minbert.train.callbacks.base import Callback

log = logging.getLogger(__name__)
TYPES = ("float", "log-float", "int", "categorical")


class SearchError(UserError, ValueError):
    """A search spec that cannot be searched."""


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple | None = None

    def suggest(self, trial):
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step or 1)
        return trial.suggest_float(self.key, self.low, self.high, log=self.type == "log-float")

    def samples(self) -> list:
        """Values at the space's corners: each must make a config that loads."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


def override(key: str, value) -> str:
    """``key=value`` with the value as TOML."""
    return f"{key}={json.dumps(value)}"


@dataclass(frozen=True)
class SearchSpec:
    path: Path
    config_path: str | None
    overrides: list[str]
    metric: str
    seed: int
    pruner: str
    space: dict[str, Param]

    def config(self, params: dict) -> Config:
        return load_config(
            self.config_path, [*self.overrides, *(override(k, v) for k, v in params.items())]
        )


def _param(path: Path, key: str, table) -> Param:
    where = f"{path}: space.{key}"
    if not isinstance(table, dict):
        raise SearchError(f"{where}: a table such as {{type = 'float', low = 0, high = 1}}")
    kind = table.get("type")
    if kind not in TYPES:
        raise SearchError(f"{where}.type: {kind!r}; one of {list(TYPES)}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "step"}
    if bad := set(table) - allowed:
        raise SearchError(
            f"{where}: unknown key(s) {sorted(bad)} for {kind}; allowed {sorted(allowed)}"
        )
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise SearchError(f"{where}.choices: give two or more values, got {choices!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise SearchError(f"{where}.choices: repeated value in {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    low, high = table.get("low"), table.get("high")
    number = (int,) if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        raise SearchError(
            f"{where}: low and high must be {'integers' if kind == 'int' else 'numbers'}"
        )
    if not low < high:
        raise SearchError(f"{where}: low ({low}) must be below high ({high})")
    if kind == "log-float" and low <= 0:
        raise SearchError(f"{where}: a log-float range must be above 0, got low = {low}")
    step = table.get("step")
    if step is not None and (kind != "int" or not isinstance(step, int) or step < 1):
        raise SearchError(f"{where}.step: a whole number of at least 1, for int only")
    return Param(
        key,
        kind,
        float(low) if kind != "int" else low,
        float(high) if kind != "int" else high,
        step,
    )


def read_search_spec(path: str | Path) -> SearchSpec:
    """The spec, checked before anything runs: every corner of the space loads as a config."""
    path = Path(path)
    data = read_toml_spec(path, {"search", "space"}, SearchError, "search")
    search = data.get("search", {})
    allowed = {"config", "set", "metric", "seed", "pruner"}
    if bad := set(search) - allowed:
        raise SearchError(
            f"{path}: search: unknown key(s) {sorted(bad)}; allowed {sorted(allowed)}"
        )
    overrides = search.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(s, str) for s in overrides):
        raise SearchError(f"{path}: search.set: a list of 'key=value' strings")
    pruner = search.get("pruner", "median")
    if pruner not in ("median", "none"):
        raise SearchError(f"{path}: search.pruner: {pruner!r}; one of ['median', 'none']")
    seed = search.get("seed", 0)
    if not isinstance(seed, int):
        raise SearchError(f"{path}: search.seed: an integer, got {seed!r}")
    space = {key: _param(path, key, table) for key, table in data.get("space", {}).items()}
    if not space:
        raise SearchError(f"{path}: the search space is empty; add [space] entries")
    spec = SearchSpec(path, search.get("config"), overrides, "", seed, pruner, space)
    try:
        base = spec.config({})
        for param in space.values():
            for value in param.samples():
                spec.config({param.key: value})
    except UserError as exc:
        raise SearchError(f"{path}: {exc}") from None
    metric = search.get("metric", "overall_leaderboard")
    allowed_metrics = selectable_metrics(base.train.tasks)
    if metric not in allowed_metrics:
        raise SearchError(f"{path}: search.metric: {metric!r}; one of {allowed_metrics}")
    return SearchSpec(path, spec.config_path, overrides, metric, seed, pruner, space)


# -- running -------------------------------------------------------------------------------------


class PruneAfterEpoch(Callback):
    """Reports each epoch's dev metric to the trial; stops the run when the pruner says so."""

    name = "prune"

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, trainer, record: dict) -> None:
        import optuna

        epoch = record["epoch"]
        self.trial.report(record["dev"][self.metric], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


def _storage(out: Path):
    import optuna

    return optuna.storages.RDBStorage(
        f"sqlite:///{(out / 'study.db').resolve()}",
        engine_kwargs={"connect_args": {"timeout": 60}},  # several processes, one file
    )


def _fail_abandoned(study) -> None:
    """Trials left RUNNING by a process of this host that is gone (killed) are marked FAIL,
    so they neither count nor block; another live process's trials are left alone."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _alive(attrs.get("pid", -1)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            log.warning("trial %d was left running by a killed search: marked FAIL", trial.number)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def run_search(spec: SearchSpec, out: str | Path, trials: int) -> dict:
    """Run trials until the study holds ``trials`` finished ones (complete or pruned)."""
    import optuna
    from optuna.trial import TrialState

    from minbert.train.session import collecting_logs, logging_to
    from minbert.train.trainer import Trainer

    if trials < 1:
        raise SearchError(f"--trials {trials}: at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if spec.pruner == "median" else None
    study = optuna.create_study(
        study_name="minbert",
        storage=_storage(out),
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=pruner or optuna.pruners.NopPruner(),
        direction="maximize",
        load_if_exists=True,
    )
    if study.user_attrs.get("spec") not in (None, spec.path.read_text(encoding="utf-8-sig")):
        raise SearchError(f"{out}: holds a study of another spec; give another --out")
    study.set_user_attr("spec", spec.path.read_text(encoding="utf-8-sig"))
    _fail_abandoned(study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)

    def objective(trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = {key: p.suggest(trial) for key, p in spec.space.items()}
        config = spec.config(params)
        folder = out / f"trial-{trial.number}"
        trial.set_user_attr("run", str(folder))
        with collecting_logs() as early:
            trainer = Trainer(config, folder, callbacks=[PruneAfterEpoch(trial, spec.metric)])
        with logging_to(RunDir(folder).log, append=False, earlier=early):
            summary = trainer.run()
        value = summary["dev"][spec.metric]
        log.info("trial %d: %s = %.4f with %s", trial.number, spec.metric, value, params)
        return value

    while len(study.get_trials(deepcopy=False, states=finished)) < trials:
        study.optimize(objective, n_trials=1, catch=())
    return write_search_results(spec, study, out)


def write_search_results(spec: SearchSpec, study, out: Path) -> dict:
    """``best.toml``, ``trials.md``, ``history.png``; returns the best trial's summary."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise SearchError(f"{out}: no trial completed")
    best = study.best_trial
    config = spec.config(best.params)
    header = f"# best of {len(done)} complete trials of {spec.path}: trial {best.number}, {spec.metric} = {best.value:.4f}\n"
    write_atomic(out / "best.toml", header + config.to_toml())
    keys = list(spec.space)
    lines = [
        f"# Search {spec.path.name}: {spec.metric} (maximised)",
        "",
        f"Best: trial {best.number}, {best.value:.4f}. Config: `best.toml`.",
        "",
        "| trial | state | " + " | ".join(f"`{k}`" for k in keys) + f" | {spec.metric} | epochs |",
        "|---|---|" + "---|" * (len(keys) + 2),
    ]
    for t in study.get_trials(deepcopy=False):
        values = [_fmt_param(t.params.get(k)) for k in keys]
        value = "–" if t.value is None else f"{t.value:.4f}"
        epochs = max(t.intermediate_values, default="–")
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | "
            + " | ".join(values)
            + f" | {value} | {epochs} |"
        )
    write_atomic(out / "trials.md", "\n".join(lines) + "\n")
    _history(study, spec.metric, out / "history.png")
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "params": best.params,
        "trials": len(done),
    }


def _fmt_param(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _history(study, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    numbers = [t.number for t in trials]
    values = [t.value for t in trials]
    best = [max(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.PRUNED]
    for t in pruned:
        last = (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan
        )
        ax.plot([t.number], [last], "x", color="grey")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"dev {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
