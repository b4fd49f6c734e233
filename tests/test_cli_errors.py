"""Inputs that say nothing or the wrong thing: non-finite settings, task tables for tasks a
run does not train, and the CLI's failures (one exit code, one ``error:`` line, no
traceback unless -v), invisible text, byte-order marks, and file permissions."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import typing
from pathlib import Path

import pytest

from minbert.cli import main
from minbert.config import Config, ConfigError, load_config
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.eval.predictor import Predictor, PredictorError

# -- 5. non-finite settings ------------------------------------------------------------------


def _float_keys(cls: type, prefix: str) -> list[tuple[str, str]]:
    """(key, how to set it to X) for every float setting under ``cls``: plain floats, lists
    and dicts of floats, nested tables, and each task's head and objective tables."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is float:
            found.append((key, f"{key}=X"))
        elif dataclasses.is_dataclass(tp):
            found += _float_keys(tp, key + ".")
        elif origin is list and args == (float,):
            found.append((key, f"{key}=[X, 0.5]"))
        elif origin is dict and args[1] is float:
            found.append((key, f"{key}={{sst = X}}"))
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            found += _float_keys(args[1], f"{key}.sts.")
    return found


FLOAT_KEYS = _float_keys(Config, "")


def test_the_walk_finds_every_kind_of_float_setting():
    keys = {key for key, _ in FLOAT_KEYS}
    assert len(keys) > 25
    assert {"train.lr", "train.betas", "train.task_weights", "model.hidden_dropout"} <= keys
    assert {"heads.sts.dropout", "objectives.sts.cosent.scale", "train.smart.epsilon"} <= keys


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key, setting", FLOAT_KEYS, ids=[k for k, _ in FLOAT_KEYS])
def test_every_float_setting_rejects_nan_and_inf(key, setting, value):
    extra = ["train.tasks=['sst', 'sts']"]
    with pytest.raises(ConfigError, match=rf"^{key}(\.sst|\[0\])?: {value} is not a finite number"):
        load_config(None, [*extra, setting.replace("X", value)])


# -- 7. configs that say nothing -------------------------------------------------------------


def test_a_task_table_for_an_untrained_task_is_named(caplog):
    with caplog.at_level(logging.WARNING, logger="minbert"):
        config = load_config(None, ["train.tasks=['sst']", "heads.sts.pooling=max"])
    assert "heads.sts: not used, the run trains only ['sst']" in caplog.text
    assert config.unused_task_tables() == ["heads.sts"]


def test_default_tables_of_untrained_tasks_say_nothing_and_are_not_saved(caplog):
    config = load_config(None, ["train.tasks=['quora']", "objectives.quora.label_smoothing=0"])
    assert config.unused_task_tables() == []
    assert set(config.to_dict()["heads"]) == {"quora"}
    with caplog.at_level(logging.WARNING, logger="minbert"):
        load_config(None, ["train.tasks=['sst']", "objectives.sts.cosent.weight=0.5"])
    assert "objectives.sts: not used" in caplog.text


# -- 8. the CLI's failures -------------------------------------------------------------------


def _fails(capsys, *args: str) -> str:
    """Run the CLI; it must fail with the one user-error code and a last line ``error: ...``."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: "), err
    assert "Traceback" not in err
    return err


def test_every_user_error_is_one_error_line_with_exit_code_2(finished_tiny_run, tmp_path, capsys):
    run = str(finished_tiny_run)
    (tmp_path / "bad.toml").write_text("[train]\nlr = 'fast'\n")
    cases = {
        "unknown key": ("config", "--set", "train.lrr=1"),
        "bad value": ("config", "--config", str(tmp_path / "bad.toml")),
        "missing config": ("train", "--config", str(tmp_path / "none.toml"), "--out", "x"),
        "no run": ("predict", str(tmp_path / "none"), "--task", "sst", "--text", "a"),
        "untrained task": ("predict", run, "--task", "cfimdb", "--text", "a"),
        "pair text missing": ("predict", run, "--task", "sts", "--text", "a"),
        "input and text": ("predict", run, "--task", "sst", "--text", "a", "--input", "f"),
        "input is a folder": ("predict", run, "--task", "sst", "--input", str(tmp_path)),
        "bad option": ("train", "--epochs", "3"),
        "resume nothing": ("train", "--resume", str(tmp_path / "none")),
        "report nothing": ("report", str(tmp_path)),
    }
    messages = {name: _fails(capsys, *args) for name, args in cases.items()}
    assert "not both" in messages["input and text"]
    assert "did not train task 'cfimdb'" in messages["untrained task"]
    assert "train.lrr" in messages["unknown key"]


def test_verbose_shows_the_traceback_of_a_user_error(capsys):
    assert main(["-v", "config", "--set", "train.lr=nan"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: train.lr")


@pytest.mark.parametrize("text", ["\x00", "\u200b", " \u200b\u200d\ufeff\t", "\u2060\x00 "])
def test_text_of_invisible_characters_only_is_empty_text(finished_tiny_run, tmp_path, text):
    predictor = Predictor.from_run(finished_tiny_run)
    with pytest.raises(PredictorError, match="empty text"):
        predictor.predict("sst", [text])
    with pytest.raises(PredictorError, match="empty text"):
        predictor.predict("sts", [("a movie", text)])
    path = tmp_path / "input.tsv"
    cell = text.replace("\t", "")  # a tab would be a column break in a file
    path.write_text(f"id\tsentence\n1\tgood\n2\t{cell}\n", encoding="utf-8")
    assert "sentence: empty text" in str(_bad_rows(path))


def _bad_rows(path: Path):
    data = read_task_file(path, TASKS["sst"], "input", labelled=False, on_bad_row="skip")
    return [str(row) for row in data.skipped]


def test_a_byte_order_mark_is_accepted_in_every_input_file(finished_tiny_run, tmp_path, capsys):
    bom = "\ufeff"
    path = tmp_path / "input.tsv"
    path.write_text(f"{bom}id\tsentence\n1\ta good film\n", encoding="utf-8")
    assert read_task_file(path, TASKS["sst"], "input", labelled=False).ids == ["1"]
    out = tmp_path / "out.csv"
    args = ["predict", str(finished_tiny_run), "--task", "sst", "--input", str(path)]
    assert main([*args, "--output", str(out)]) == 0
    assert out.read_text().splitlines()[1].startswith("1,")
    config = tmp_path / "c.toml"
    config.write_text(f"{bom}[train]\nlr = 3e-5\n", encoding="utf-8")
    assert load_config(config).train.lr == 3e-5


def test_the_files_of_a_run_follow_the_umask(finished_tiny_run):
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in finished_tiny_run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {str(p.relative_to(finished_tiny_run)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert {k: m for k, m in modes.items() if m != 0o666 & ~umask and k != ".lock"} == {}
