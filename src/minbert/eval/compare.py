"""A markdown table comparing finished runs (``minbert compare RUN...``), for ablations.

One row per run: dev scores of its final (best) model, best epoch, training wall time, peak
RSS and, for runs that logged gradient conflicts (``train.log_conflicts_every``), each task
pair's conflict rate. ``mean_row`` adds a row of mean ± standard deviation over the runs (the
seeds of one recipe).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from minbert.run.layout import RunDir

COLUMNS = [
    ("sst_accuracy", "SST acc"),
    ("cfimdb_accuracy", "CFIMDB acc"),
    ("quora_accuracy", "Quora acc"),
    ("sts_pearson", "STS r"),
    ("overall_mean", "overall (mean)"),
    ("overall_leaderboard", "overall (leaderboard)"),
]


def run_summary(run: Path) -> dict:
    layout = RunDir(run)
    if not layout.final.is_file():
        raise FileNotFoundError(f"{run}: no {layout.final.name} (the run has not finished)")
    summary = json.loads(layout.final.read_text())
    records = layout.read_metrics()
    if not records:
        raise FileNotFoundError(f"{run}: no epoch records in {layout.metrics.name}")
    summary["epochs"] = len(records)
    summary["examples"] = {
        task: sum(r["examples"].get(task, 0) for r in records) for task in records[0]["examples"]
    }
    rss = [r["peak_rss_mib"] for r in records if "peak_rss_mib" in r]
    summary["peak_rss_mib"] = max(rss) if rss else None
    summary["conflict_rate"] = conflict_rates(records)
    return summary


def conflict_rates(records: list[dict]) -> dict[str, float]:
    """Per task pair, the fraction of all logged steps (every epoch) with a negative cosine."""
    cosines: dict[str, list[float]] = {}
    for record in records:
        for pair, values in record.get("conflicts", {}).get("cosine", {}).items():
            cosines.setdefault(pair, []).extend(v for v in values if v is not None)
    return {pair: sum(c < 0 for c in v) / len(v) for pair, v in cosines.items() if v}


def _mean_std(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else ""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def compare_table(runs: list[Path], mean_row: bool = False) -> str:
    summaries = {run: run_summary(run) for run in runs}
    present = [(k, name) for k, name in COLUMNS if any(k in s["dev"] for s in summaries.values())]
    pairs = sorted({p for s in summaries.values() for p in s["conflict_rate"]})
    rss = any(s["peak_rss_mib"] is not None for s in summaries.values())
    header = [
        "run",
        *[name for _, name in present],
        "best epoch",
        "train wall (s)",
        *(["peak RSS (MiB)"] if rss else []),
        *([f"conflicts {p}" for p in pairs]),
        "rows seen",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, s in summaries.items():
        cells = [f"{s['dev'][k]:.3f}" if k in s["dev"] else "" for k, _ in present]
        cells += [f"{s['best_epoch']}/{s['epochs']}", f"{s['train_wall_seconds']:.0f}"]
        if rss:
            cells.append(f"{s['peak_rss_mib']:,}" if s["peak_rss_mib"] is not None else "")
        cells += [f"{s['conflict_rate'][p]:.2f}" if p in s["conflict_rate"] else "" for p in pairs]
        cells.append(", ".join(f"{t} {n}" for t, n in s["examples"].items()))
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    if mean_row:
        values = list(summaries.values())
        cells = [_mean_std([s["dev"][k] for s in values if k in s["dev"]], 3) for k, _ in present]
        cells += ["", _mean_std([s["train_wall_seconds"] for s in values], 0)]
        if rss:
            cells.append(_mean_std([s["peak_rss_mib"] for s in values if s["peak_rss_mib"]], 0))
        cells += [
            _mean_std([s["conflict_rate"][p] for s in values if p in s["conflict_rate"]], 2)
            for p in pairs
        ]
        cells.append("")
        lines.append(f"| mean ± std of {len(values)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
