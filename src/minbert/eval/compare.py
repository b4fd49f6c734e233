"""A markdown table comparing finished runs (``minbert compare RUN...``), for ablations."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [
    ("sst_accuracy", "SST acc"),
    ("cfimdb_accuracy", "CFIMDB acc"),
    ("quora_accuracy", "Quora acc"),
    ("sts_pearson", "STS r"),
    ("overall_mean", "overall (mean)"),
    ("overall_leaderboard", "overall (leaderboard)"),
]


def run_summary(run: Path) -> dict:
    final = run / "final.json"
    if not final.is_file():
        raise FileNotFoundError(f"{run}: no final.json (the run has not finished)")
    summary = json.loads(final.read_text())
    records = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line
    ]
    summary["epochs"] = len(records)
    summary["examples"] = {
        task: sum(r["examples"].get(task, 0) for r in records) for task in records[0]["examples"]
    }
    return summary


def compare_table(runs: list[Path]) -> str:
    summaries = {run: run_summary(run) for run in runs}
    present = [(k, name) for k, name in COLUMNS if any(k in s["dev"] for s in summaries.values())]
    header = ["run", *[name for _, name in present], "best epoch", "train wall (s)", "rows seen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, s in summaries.items():
        cells = [f"{s['dev'][k]:.3f}" if k in s["dev"] else "" for k, _ in present]
        seen = ", ".join(f"{t} {n}" for t, n in s["examples"].items())
        lines.append(
            f"| {run.name} | "
            + " | ".join(cells)
            + f" | {s['best_epoch']}/{s['epochs']} | {s['train_wall_seconds']:.0f} | {seen} |"
        )
    return "\n".join(lines) + "\n"
