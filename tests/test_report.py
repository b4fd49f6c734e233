"""The run report: pure helpers against references, and a whole report of a fake run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minbert.config import load_config
from minbert.data.io import write_predictions
from minbert.data.tasks import TASKS
from minbert.eval.report import (
    ReportError,
    bucket_errors,
    confusion_matrix,
    ordered_keys,
    score_edges,
    worst_errors,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEV_ROWS = {"sst": 14, "quora": 10, "sts": 12}
DEV_LIMIT = 12  # the sst file has more rows than the run used


def _ids(task: str, n: int) -> list[str]:
    return [f"{task}{i:03d}" for i in range(n)]


def _write_dev_files(data_dir, rng) -> dict[str, np.ndarray]:
    """Dev files in the real format (pandas index column, tab-separated); returns the labels."""
    data_dir.mkdir()
    labels = {
        "sst": rng.integers(0, 5, DEV_ROWS["sst"]),
        "quora": rng.integers(0, 2, DEV_ROWS["quora"]).astype(float),
        "sts": np.round(rng.uniform(0, 5, DEV_ROWS["sts"]), 1),
    }
    labels["sts"][:2] = [0.0, 5.0]  # both ends of the score range
    for task, gold in labels.items():
        spec = TASKS[task]
        lines = ["\t" + "\t".join(["id", *spec.text_columns, spec.label_column])]
        for i, (row_id, label) in enumerate(zip(_ids(task, len(gold)), gold, strict=True)):
            texts = [f" {task} text {i} | part {c} " + "word " * (40 * (i == 0)) for c in "ab"]
            label_text = str(int(label)) if spec.label_kind == "class" else f"{label:.1f}"
            lines.append("\t".join([str(i), row_id, *texts[: len(spec.text_columns)], label_text]))
        (data_dir / spec.files["dev"]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return labels


@pytest.fixture
def run_dir(tmp_path):
    """A finished three-task run of two epochs, with predictions and raw outputs."""
    rng = np.random.default_rng(0)
    labels = _write_dev_files(tmp_path / "data", rng)
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    config = load_config(
        None,
        [
            "train.tasks=['sst', 'quora', 'sts']",
            f"data.dir='{tmp_path / 'data'}'",
            f"data.dev_limit={DEV_LIMIT}",
        ],
    )
    (run / "config.toml").write_text(config.to_toml(), encoding="utf-8")

    n_sst = min(DEV_ROWS["sst"], DEV_LIMIT)
    logits = rng.normal(size=(n_sst, 5))
    outputs = {"sst": logits, "quora": rng.normal(size=DEV_ROWS["quora"])}
    predictions = {"sst": logits.argmax(1), "quora": (outputs["quora"] > 0).astype(int)}
    predictions["sts"] = np.clip(labels["sts"] + rng.normal(0, 0.8, DEV_ROWS["sts"]), 0, 5)
    outputs["sts"] = predictions["sts"] / 5  # training space [0, 1]
    for task, values in predictions.items():
        write_predictions(
            run / "predictions" / f"{task}-dev.csv",
            _ids(task, len(values)),
            values,
            TASKS[task].label_kind,
        )
        np.save(run / "predictions" / f"{task}-dev-outputs.npy", outputs[task].astype(np.float32))

    dev = {"sst_accuracy": 0.4, "quora_accuracy": 0.7, "sts_pearson": 0.5}
    records = []
    for epoch in (1, 2):
        scores = {k: v + 0.05 * epoch for k, v in dev.items()}
        records.append(
            {
                "epoch": epoch,
                "step": 10 * epoch,
                "train_loss": {"sst": 1.5 / epoch, "quora": 0.6 / epoch, "sts": 0.05 / epoch},
                "examples": {"sst": 96, "quora": 64, "sts": 80},
                "planned_examples": {"sst": 96, "quora": 64, "sts": 96},
                "dev": {**scores, "overall_mean": 0.6, "overall_leaderboard": 0.7},
                "lr": 1e-5,
                "train_seconds": 9.0,
                "elapsed_seconds": 10.0 * epoch,
                "a_future_key": {"ignored": True},
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    final = {
        "best_epoch": 2,
        "dev": records[-1]["dev"],
        "train_wall_seconds": 21.3,
        "device": "cpu",
        "bf16": True,
    }
    (run / "final.json").write_text(json.dumps(final))
    return run


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} looks empty"


def test_report_writes_every_file(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report"
    names = {p.name for p in out.iterdir()}
    pngs = {"curves.png", "sst-confusion.png", "quora-confusion.png", "sts-scatter.png"}
    assert names == pngs | {"summary.md"}
    for name in pngs:
        _assert_png(out / name)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# Run report: run")
    assert "## Best epoch: 2" in summary
    assert "(r + 1) / 2" in summary and "overall (leaderboard)" in summary
    assert "| epoch | sst loss | quora loss | sts loss | sst accuracy |" in summary
    assert "80 of 96 planned" in summary
    assert "21.3 s" in summary and "device: cpu" in summary and "bf16: True" in summary
    assert "```toml" in summary and f"dev_limit = {DEV_LIMIT}" in summary
    for name in pngs:
        assert f"]({name})" in summary
    for task in ("sst", "quora", "sts"):
        assert f"### {task} (" in summary
    assert "p(predicted)" in summary and "abs error" in summary
    assert "Quora duplicate questions" in summary  # the packaged model's pre-training overlap
    assert "a_future_key" not in summary
    assert "…" in summary  # long texts are cut
    assert "\\|" in summary  # pipes in texts cannot break the tables


def test_confusion_matrix_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    gold, pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    expected = sklearn_metrics.confusion_matrix(gold, pred, labels=range(5))
    np.testing.assert_array_equal(confusion_matrix(gold, pred, 5), expected)
    # a class nobody predicted still has its column
    assert confusion_matrix(np.array([0, 2]), np.array([0, 0]), 3).tolist() == [
        [1, 0, 0],
        [0, 0, 0],
        [1, 0, 0],
    ]
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 0]), 3)


def test_bucket_errors_by_hand():
    gold = np.array([0.0, 0.5, 1.0, 3.2, 5.0, 4.0])
    pred = np.array([1.0, 0.0, 1.5, 3.0, 4.0, 4.5])
    mae, counts = bucket_errors(gold, pred, score_edges(TASKS["sts"]))
    assert counts.tolist() == [2, 1, 0, 1, 2]  # 5.0 falls in the closed last bucket [4, 5]
    np.testing.assert_allclose(mae, [0.75, 0.5, np.nan, 0.2, 0.75])
    with pytest.raises(ValueError, match="increasing edges"):
        bucket_errors(gold, pred, [0, 0])


def test_worst_errors_put_confident_mistakes_first():
    gold = np.array([0, 1, 2, 0, 1])
    logits = np.array(
        [
            [5.0, 0.0, 0.0],  # right
            [0.0, 0.0, 3.0],  # wrong, fairly sure
            [9.0, 0.0, 0.0],  # wrong, very sure
            [0.0, 0.1, 0.0],  # wrong, unsure
            [0.0, 9.0, 0.0],  # right, very sure
        ]
    )
    ranked = worst_errors("class", gold, logits.argmax(1), logits)
    assert ranked.rows.tolist() == [2, 1, 3]
    assert ranked.values[0] > 0.99 and ranked.measure == "p(predicted)"
    # without outputs: distance between classes (2, 1, 1), ties in file order
    ranked = worst_errors("class", gold, logits.argmax(1), None)
    assert ranked.rows.tolist() == [2, 1, 3] and ranked.values.tolist() == [2, 1, 1]

    binary_logits = np.array([4.0, -6.0, 0.5, -0.2, 3.0])
    binary_gold = np.array([0.0, 1.0, 0.0, 0.0, 1.0])
    binary_pred = (binary_logits > 0).astype(int)
    ranked = worst_errors("binary", binary_gold, binary_pred, binary_logits, k=2)
    assert ranked.rows.tolist() == [1, 0]  # -6 sure of 0 but gold 1, then 4 sure of 1
    assert ranked.values[0] == pytest.approx(1 / (1 + np.exp(-6.0)))  # p(0) at logit -6

    ranked = worst_errors("score", np.array([1.0, 2.0, 3.0]), np.array([1.1, 4.0, 2.0]))
    assert ranked.rows.tolist() == [1, 2, 0]
    np.testing.assert_allclose(ranked.values, [2.0, 1.0, 0.1])


def test_report_tables_rank_confidently_wrong_rows_first(run_dir):
    summary = (write_report(run_dir) / "summary.md").read_text(encoding="utf-8")
    section = summary.split("### quora (binary)")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    confidences = [float(line.rsplit("|", 2)[1]) for line in rows]
    assert confidences and confidences == sorted(confidences, reverse=True)


def test_mismatched_ids_name_the_prediction_file(run_dir):
    path = run_dir / "predictions" / "quora-dev.csv"
    lines = path.read_text().splitlines()
    lines[3] = "not-a-dev-id," + lines[3].split(",")[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"quora-dev\.csv: ids do not match the dev file") as info:
        write_report(run_dir)
    assert "row 3" in str(info.value) and "not-a-dev-id" in str(info.value)


def test_missing_outputs_still_make_a_report(run_dir):
    for task in ("sst", "quora", "sts"):
        (run_dir / "predictions" / f"{task}-dev-outputs.npy").unlink()
    out = write_report(run_dir)
    _assert_png(out / "sst-confusion.png")
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "sst-dev-outputs.npy not found" in summary
    assert "no raw outputs" in summary


def test_unfinished_run_gets_a_partial_report(run_dir):
    (run_dir / "final.json").unlink()
    for path in (run_dir / "predictions").iterdir():
        path.unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text(lines[0] + "\n")  # one epoch so far
    out = write_report(run_dir)
    assert {p.name for p in out.iterdir()} == {"summary.md", "curves.png"}
    _assert_png(out / "curves.png")
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "Run not finished" in summary and "no dev predictions" in summary


def test_missing_config_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="config.toml: not found"):
        write_report(tmp_path)


# ---------------------------------------------------------------------------------------------
# Runs that train pre-training objectives: alone (minbert pretrain) or beside tasks.

PRETRAIN_DEV = {
    "mlm_accuracy": 0.034,
    "mlm_perplexity": 2388.42,
    "sts_zeroshot_pearson": 0.83,
    "sts_zeroshot_spearman": 0.80,
}


def _write_run(run, overrides: list[str], records: list[dict], best_epoch: int | None) -> None:
    """A run folder by hand: config.toml, metrics.jsonl and (if ``best_epoch``) final.json."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(load_config(None, overrides).to_toml(), encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if best_epoch:
        final = {"best_epoch": best_epoch, "dev": records[best_epoch - 1]["dev"]}
        (run / "final.json").write_text(json.dumps(final | {"device": "cpu", "bf16": False}))


def _pretrain_records(epochs: int = 2) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "step": 30 * epoch,
            "train_loss": {"mlm": 9.0 / epoch},
            "examples": {"mlm": 960},
            "planned_examples": {"mlm": 960},
            "dev": {k: v * (1 + 0.1 * epoch) for k, v in PRETRAIN_DEV.items()},
            "train_seconds": 16.8,
        }
        for epoch in range(1, epochs + 1)
    ]


MLM_RUN = ["train.tasks=[]", "pretrain.mlm.weight=1", "train.select_by='mlm_accuracy'"]


def _before_config(summary: str) -> str:
    return summary.split("## Resolved config")[0]


def test_pretraining_run_report_names_its_objectives_and_metrics(tmp_path):
    run = tmp_path / "pre"
    _write_run(run, MLM_RUN, _pretrain_records(), best_epoch=2)
    out = write_report(run)
    assert {p.name for p in out.iterdir()} == {"summary.md", "curves.png"}
    _assert_png(out / "curves.png")
    summary = _before_config((out / "summary.md").read_text(encoding="utf-8"))
    assert "Objectives: mlm (pre-training, no task)." in summary
    assert "Tasks:" not in summary
    for label in (
        "| MLM masked-token accuracy (held-out text) | 0.0408 |",
        "| MLM perplexity (held-out text; lower is better) | 2866.10 |",
        "| zero-shot STS Pearson r (cosine of pooled embeddings) |",
        "| zero-shot STS Spearman rho (cosine of pooled embeddings) |",
    ):
        assert label in summary
    assert "chosen by MLM accuracy (train.select_by = `mlm_accuracy`)" in summary
    assert "overall" not in summary  # no task: no mean over tasks, and no note about one
    assert (
        "| epoch | mlm loss | MLM accuracy | MLM perplexity | zero-shot STS r | "
        "zero-shot STS rho | train s |"
    ) in summary
    assert "| 1 | 9.0000 | 0.0374 | 2627.26 |" in summary
    assert "| epoch | mlm |\n|---|---|\n| 1 | 960 |" in summary
    assert "Worst dev errors" not in summary


def test_pretraining_run_with_two_objectives_and_no_final(tmp_path):
    run = tmp_path / "pre"
    overrides = [
        "train.tasks=[]",
        "pretrain.mlm.weight=0.5",
        "pretrain.simcse.weight=1",
        "pretrain.simcse.tasks=['sts']",
        "train.select_by='sts_zeroshot_spearman'",
    ]
    records = _pretrain_records(1)
    records[0]["train_loss"]["simcse"] = 2.5
    records[0]["examples"]["simcse"] = 640
    _write_run(run, overrides, records, best_epoch=None)
    summary = _before_config((write_report(run) / "summary.md").read_text(encoding="utf-8"))
    assert (
        "Objectives: mlm, simcse unsup (pre-training, no task; loss weights mlm 0.5, simcse 1)."
    ) in summary
    assert "Run not finished" in summary and "overall" not in summary
    assert "chosen by zero-shot STS rho (train.select_by = `sts_zeroshot_spearman`)" in summary
    assert "| epoch | mlm loss | simcse loss | MLM accuracy |" in summary
    assert "| epoch | mlm | simcse |\n|---|---|---|\n| 1 | 960 | 640 |" in summary


def test_task_run_with_an_auxiliary_objective_lists_it(run_dir):
    data_dir = run_dir.parent / "data"
    config = load_config(
        None,
        [
            "train.tasks=['sst', 'quora', 'sts']",
            f"data.dir='{data_dir}'",
            f"data.dev_limit={DEV_LIMIT}",
            "pretrain.mlm.weight=0.5",
            "pretrain.mlm.share=0.25",
        ],
    )
    (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # what the trainer logs for an auxiliary objective
        r["train_loss"]["mlm"] = 4.0
        r["examples"]["mlm"] = 24
        r["planned_examples"]["mlm"] = 24
        r["dev"] |= {"mlm_accuracy": 0.3, "mlm_perplexity": 55.0}
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    final = json.loads((run_dir / "final.json").read_text())
    (run_dir / "final.json").write_text(json.dumps(final | {"dev": records[-1]["dev"]}))

    out = write_report(run_dir)
    summary = _before_config((out / "summary.md").read_text(encoding="utf-8"))
    assert "Tasks: sst, quora, sts; auxiliary: mlm (share 0.25, weight 0.5)." in summary
    assert "| overall (leaderboard) | 0.7000 |" in summary  # the task rows stay
    assert "| MLM masked-token accuracy (held-out text) | 0.3000 |" in summary
    assert "(MLM accuracy, MLM perplexity) are not in either" in summary
    assert "| epoch | sst loss | quora loss | sts loss | mlm loss | sst accuracy |" in summary
    assert "overall (leaderboard) | MLM accuracy | MLM perplexity | train s |" in summary
    assert "| epoch | sst | quora | sts | mlm |" in summary
    for task in ("sst", "quora", "sts"):
        assert f"### {task} (" in summary
    _assert_png(out / "curves.png")


def test_ordered_keys_keep_the_named_first_then_numbers_as_they_appear():
    dicts = [{"sst": 1.0, "mlm": 2.0}, None, {"simcse": 3, "note": "text", "flag": True}]
    assert ordered_keys(["sst", "quora"], dicts) == ["sst", "quora", "mlm", "simcse"]
