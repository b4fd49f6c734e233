"""Attention per group of similar lengths (``BertModel.group_attention``) against attention on
the whole padded batch, on the benchmark's *default* dev scoring: the first ``--dev-limit``
rows of each dev set in file order, batch 128 (docs/PERFORMANCE.md, "The higher bars").
Runs alternate on and off, so the ratio is taken pair by pair.

    .venv/bin/python benchmarks/grouped_attention.py [--bf16] [--reps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minbert.bench.systems import build_minbert, load_bench_data, score_run, scoring_batches
from minbert.device import keep_freed_memory
from minbert.model.bert import attention_groups
from minbert.model.loading import load_pretrained


def attention_work(batches) -> tuple[int, int, float]:
    """Query-key pairs attended padded to the batch and per group, and the real tokens' share
    of the padded batches' tokens (the per-token work packing saves)."""
    padded = grouped = real = tokens = 0
    for _, batch in batches:
        for segment in batch.segments:
            keep = segment.attention_mask.bool()
            b, t = keep.shape
            padded += b * t * t
            groups = attention_groups(keep.sum(1))
            grouped += sum(len(g.rows) * g.length**2 for g in groups) if groups else b * t * t
            real, tokens = real + int(keep.sum()), tokens + b * t
    return padded, grouped, real / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dev-limit", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    system = build_minbert("minilm-l6", "sdpa", seed=0)
    _, tokenizer = load_pretrained("minilm-l6")
    data = load_bench_data("data", tokenizer, 128, train_limit=1, dev_limit=args.dev_limit)
    batches = scoring_batches(data.dev, 128, sort_by_length=False)
    sentences = sum(len(b) * len(b.segments) for _, b in batches)
    padded, grouped, real_share = attention_work(batches)
    print(
        f"{len(batches)} batches, {sentences} sentences in file order; real tokens are "
        f"{real_share:.1%} of the padded batches'; attention work per group is "
        f"{grouped / padded:.1%} of the padded batch's"
    )
    encoder, device = system.model.encoder, torch.device("cpu")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(args.reps + 1):  # the first pair warms up (oneDNN kernels) and is dropped
        for grouped_on in (True, False) if rep % 2 else (False, True):
            encoder.group_attention = grouped_on
            start = time.perf_counter()
            score_run(system, batches, device, args.bf16)
            if rep:
                seconds[grouped_on].append(time.perf_counter() - start)
    ratios = [off / on for on, off in zip(seconds[True], seconds[False], strict=True)]
    for grouped_on in (False, True):
        rate = sentences / statistics.median(seconds[grouped_on])
        name = "per length group" if grouped_on else "whole padded batch"
        print(f"attention on the {name}: {rate:,.0f} sentences/s (median of {args.reps})")
    print(
        f"speed-up, pair by pair: median {statistics.median(ratios):.3f}x "
        f"({min(ratios):.3f}-{max(ratios):.3f}), bf16={args.bf16}, threads={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
