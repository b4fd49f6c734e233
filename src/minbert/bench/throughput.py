"""``minbert bench``: training and inference throughput of minbert against transformers.

In ONE process, on the same pretrained weights, batches, dtype and task data, the two systems
(``systems.py``) take turns run by run, in two setups configured alike for both:

- *default*, what a transformers user gets: ``BertModel``'s default attention, fp32, batches
  drawn at random and padded to their longest row, dev sets scored in file order;
- *best*: sdpa attention, bf16 autocast, length-grouped training batches (sorted within
  shuffled chunks), dev sets scored sorted by length.

Per setup: training (full optimiser steps on a round-robin of SST, Quora and STS batches) in
real and padded tokens/s and as a fraction of the measured matmul peak; inference (the three
dev sets under ``torch.inference_mode``) in sentences/s; peak memory; a fixed batch of 32 x
128 tokens for the FLOP-fraction target. Every figure has the median and spread of
``reps`` runs, and each repetition pairs one minbert run with one peer run, so the ratio
minbert / peer is taken pair by pair. ``ablate`` measures minbert with each optimisation of
the best setup switched off in turn; ``sweep`` plots tokens/s against sequence length and
batch size for both systems.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from minbert.bench.compare import compare_systems, environment, headline_ratios, release_memory
from minbert.bench.measure import process_peak_rss_mib
from minbert.bench.options import ABLATIONS, QUICK, SETUPS, BenchOptions, Setup, Variant
from minbert.bench.sweep import plot_sweep, run_sweep, sweep_title
from minbert.bench.tables import markdown_report
from minbert.device import resolve_device

# Re-exported: the names code outside the package imported from here before the split.
__all__ = [
    "ABLATIONS",
    "QUICK",
    "SETUPS",
    "BenchOptions",
    "Setup",
    "Variant",
    "headline_ratios",
    "run",
]


def run(options: BenchOptions) -> tuple[dict, str]:
    """Measure what ``options`` asks; write the JSON and the plot; return results and a report."""
    device = resolve_device(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    results: dict = {"environment": environment(device), "options": asdict(options)}
    if options.compare or options.ablate:
        results.update(compare_systems(options, device))
    if options.sweep_png:
        rows = run_sweep(options, device)
        release_memory(device)
        plot_sweep(rows, Path(options.sweep_png), sweep_title(options, device))
        results["sweep"] = {"setup": options.sweep_setup, "plot": options.sweep_png, "rows": rows}
    results["process_peak_rss_mib"] = process_peak_rss_mib()
    if options.json_path:
        path = Path(options.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results, markdown_report(results)
