"""``minbert compare``: the table of finished runs, on hand-written run folders."""

import json

import pytest

from minbert.eval.compare import compare_table, conflict_rates


def _run(folder, sst, sts, wall, rss, cosines):
    folder.mkdir()
    dev = {"sst_accuracy": sst, "sts_pearson": sts, "overall_mean": (sst + sts) / 2}
    final = {"dev": dev, "best_epoch": 1, "train_wall_seconds": wall}
    (folder / "final.json").write_text(json.dumps(final))
    record = {
        "epoch": 1,  # every record the trainer writes has one (RunDir.read_metrics checks)
        "examples": {"sst": 10, "sts": 5},
        "peak_rss_mib": rss,
        "conflicts": {"cosine": {"sst/sts": cosines}},
    }
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return folder


def test_conflict_rate_counts_negative_cosines_over_logged_steps():
    records = [
        {"conflicts": {"cosine": {"a/b": [-0.1, 0.2, None]}}},
        {"conflicts": {"cosine": {"a/b": [-0.3, 0.0]}}},
        {},  # an epoch that logged nothing
    ]
    assert conflict_rates(records) == {"a/b": pytest.approx(2 / 4)}


def test_table_has_rss_conflicts_and_a_mean_row(tmp_path):
    runs = [
        _run(tmp_path / "s1", 0.50, 0.80, 100, 2000, [-0.1, 0.1]),
        _run(tmp_path / "s2", 0.52, 0.90, 120, 2100, [0.1, 0.1]),
    ]
    table = compare_table(runs, mean_row=True)
    lines = table.splitlines()
    assert "peak RSS (MiB)" in lines[0] and "conflicts sst/sts" in lines[0]
    assert "| s1 | 0.500 | 0.800 | 0.650 | 1/1 | 100 | 2,000 | 0.50 | sst 10, sts 5 |" in lines
    # statistics.stdev of (0.50, 0.52) = 0.01414, of (0.8, 0.9) = 0.0707
    assert lines[-1].startswith("| mean ± std of 2 | 0.510 ± 0.014 | 0.850 ± 0.071 |")
    assert "110 ± 14" in lines[-1] and "0.25 ± 0.35" in lines[-1]
    assert "mean ± std" not in compare_table(runs)
