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
    assert records and {"epoch", "train_loss", "dev", "examples", "epoch_seconds"} <= set(
        records[0]
    )
    for name in ("model.safetensors", "config.toml", "encoder.json", "vocab.txt", "meta.json"):
        assert (smoke_run / "best" / name).is_file()


def test_prediction_files_have_every_id_once(smoke_run, data_dir):
    for split, source, limit in (
        ("dev", "ids-sst-dev.csv", 64),
        ("test", "ids-sst-test-student.csv", None),
    ):
        with open(data_dir / source, encoding="utf-8") as f:
            ids = [row["id"] for row in csv.DictReader(f, delimiter="\t")][:limit]
        with open(smoke_run / "predictions" / f"sst-{split}.csv", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", "prediction"]
        assert [r[0] for r in rows[1:]] == ids
        assert {int(r[1]) for r in rows[1:]} <= set(range(5))


def test_eval_recomputes_the_dev_metric(smoke_run, capsys):
    saved = json.loads((smoke_run / "final.json").read_text())["dev"]["sst_accuracy"]
    assert main(["eval", str(smoke_run)]) == 0
    out = capsys.readouterr().out
    assert "sst_accuracy" in out and f"{saved:.4f}" in out


def test_predict_text_and_errors(smoke_run, capsys):
    assert (
        main(["predict", str(smoke_run), "--task", "sst", "--text", "A gorgeous, moving film."])
        == 0
    )
    assert capsys.readouterr().out.strip() in {"0", "1", "2", "3", "4"}
    with pytest.raises(SystemExit, match="did not train task 'sts'"):
        main(["predict", str(smoke_run), "--task", "sts", "--text", "a", "--text2", "b"])


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
