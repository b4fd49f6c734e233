"""End to end through the CLI on the real data: the smoke config (a few steps, small slices)."""

import csv
import json

import pytest

from minbert.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs/smoke.toml"),
            "--out",
            str(out),
            "--set",
            f"data.dir={data_dir}",
        ]
    )
    assert code == 0
    return out


def test_run_folder_holds_everything(smoke_run):
    assert (smoke_run / "config.toml").is_file()
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert records and {"epoch", "train_loss", "dev", "examples", "train_seconds"} <= set(
        records[0]
    )
    for name in ("model.safetensors", "config.toml", "encoder.json", "vocab.txt", "meta.json"):
        assert (smoke_run / "best" / name).is_file()


FILES = {
    "sst": ("ids-sst-dev.csv", "ids-sst-test-student.csv"),
    "quora": ("quora-dev.csv", "quora-test-student.csv"),
    "sts": ("sts-dev.csv", "sts-test-student.csv"),
}


@pytest.mark.parametrize("task", sorted(FILES))
def test_prediction_files_have_every_id_once(smoke_run, data_dir, task):
    for split, source, limit in (("dev", FILES[task][0], 64), ("test", FILES[task][1], None)):
        with open(data_dir / source, encoding="utf-8") as f:
            ids = [row["id"] for row in csv.DictReader(f, delimiter="\t")][:limit]
        with open(smoke_run / "predictions" / f"{task}-{split}.csv", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", "prediction"]
        assert [r[0] for r in rows[1:]] == ids
        values = [float(r[1]) for r in rows[1:]]
        allowed = {"sst": set(range(5)), "quora": {0, 1}}.get(task)
        if allowed:
            assert set(values) <= allowed and all(r[1].isdigit() for r in rows[1:])
        else:
            assert all(0.0 <= v <= 5.0 for v in values)


def test_eval_recomputes_the_dev_metric(smoke_run, capsys):
    saved = json.loads((smoke_run / "final.json").read_text())["dev"]
    assert main(["eval", str(smoke_run)]) == 0
    out = capsys.readouterr().out
    for key in ("sst_accuracy", "quora_accuracy", "sts_pearson", "overall_mean"):
        assert f"{saved[key]:.4f}" in out


def test_predict_text_and_errors(smoke_run, capsys):
    assert (
        main(["predict", str(smoke_run), "--task", "sst", "--text", "A gorgeous, moving film."])
        == 0
    )
    assert capsys.readouterr().out.strip() in {"0", "1", "2", "3", "4"}
    assert (
        main(
            [
                "predict",
                str(smoke_run),
                "--task",
                "sts",
                "--text",
                "A man plays.",
                "--text2",
                "A man is playing.",
            ]
        )
        == 0
    )
    assert 0.0 <= float(capsys.readouterr().out) <= 5.0
    assert (
        main(
            [
                "predict",
                str(smoke_run),
                "--task",
                "quora",
                "--text",
                "How do I cook rice?",
                "--text2",
                "What is the way to cook rice?",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() in {"0", "1"}
    assert main(["predict", str(smoke_run), "--task", "cfimdb", "--text", "a"]) == 2
    assert "error: this run did not train task 'cfimdb'" in capsys.readouterr().err
    assert main(["predict", str(smoke_run), "--task", "sts", "--text", "a"]) == 2
    assert "error: task sts needs --text and --text2" in capsys.readouterr().err


def test_predict_file(smoke_run, tmp_path):
    source = tmp_path / "in.tsv"
    source.write_text("id\tsentence\nx1\t great fun\nx2\t dull and long\n")
    assert (
        main(
            [
                "predict",
                str(smoke_run),
                "--task",
                "sst",
                "--input",
                str(source),
                "--output",
                str(tmp_path / "out.csv"),
            ]
        )
        == 0
    )
    rows = list(csv.reader((tmp_path / "out.csv").read_text().splitlines()))
    assert [r[0] for r in rows] == ["id", "x1", "x2"]


def test_export_of_a_run(smoke_run, tmp_path):
    from minbert.model.loading import load_pretrained

    assert main(["export", str(smoke_run), str(tmp_path / "hf")]) == 0
    encoder, _ = load_pretrained(tmp_path / "hf")
    assert encoder.config.num_hidden_layers == 6


def test_bad_config_exits_with_message(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "x"), "--set", "train.lr=fast"])
    assert code == 2
    assert "train.lr: expected a number" in capsys.readouterr().err


def test_compare_table(smoke_run, capsys):
    assert main(["compare", str(smoke_run)]) == 0
    out = capsys.readouterr().out
    assert "| smoke |" in out and "STS r" in out and "sst 32" in out


def test_config_doc_lists_every_group(capsys):
    assert main(["config", "--doc", "--set", "train.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "train.lr = 0.0001" in out and "heads.sts.kind" in out and "one of sequential" in out
