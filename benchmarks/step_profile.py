"""Where a minbert training step's time goes: torch.profiler's operator table for optimiser
steps on one fixed batch (default 32 x 128 tokens, bf16 autocast, the benchmark's SST head),
grouped into matrix products and everything else (docs/PERFORMANCE.md, "FLOP fraction").
With ``--scoring``: the benchmark's *default* dev scoring instead (the first 500 rows of
each dev set in file order, batch 128, fp32 unless ``--bf16``).

    .venv/bin/python benchmarks/step_profile.py [--batch 32x128] [--steps 10] [--fp32]
    .venv/bin/python benchmarks/step_profile.py --scoring [--bf16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torch.profiler import profile

from minbert.bench.systems import (
    build_minbert,
    load_bench_data,
    score_run,
    scoring_batches,
    synthetic_batch,
    train_run,
)
from minbert.device import keep_freed_memory
from minbert.model.loading import load_pretrained

MATMULS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}
ATTENTION = "scaled_dot_product"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="32x128", help="BxT (default 32x128)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--scoring", action="store_true", help="profile dev scoring instead")
    parser.add_argument("--bf16", action="store_true", help="with --scoring: bf16 autocast")
    args = parser.parse_args()
    keep_freed_memory()
    if args.scoring:
        profile_scoring(args.bf16)
        return
    b, t = (int(x) for x in args.batch.split("x"))
    system = build_minbert("minilm-l6", "sdpa", seed=0)
    batches = [synthetic_batch(b, t, system.model.encoder.config.vocab_size)] * args.steps
    device, bf16 = torch.device("cpu"), not args.fp32
    seconds, prof = time_and_profile(
        lambda: train_run(system, batches, device, bf16),
        warm_up=lambda: train_run(system, batches[:3], device, bf16),  # compiles, oneDNN
    )
    per_step = seconds / args.steps
    print(
        f"{args.batch}, bf16={bf16}: {per_step * 1e3:.0f} ms per step, {b * t / per_step:,.0f} tokens/s"
    )
    print_breakdown(prof)


def profile_scoring(bf16: bool, dev_limit: int = 500, batch_size: int = 128) -> None:
    system = build_minbert("minilm-l6", "sdpa", seed=0)
    _, tokenizer = load_pretrained("minilm-l6")
    data = load_bench_data("data", tokenizer, 128, train_limit=1, dev_limit=dev_limit)
    batches = scoring_batches(data.dev, batch_size, sort_by_length=False)
    device = torch.device("cpu")
    run = partial(score_run, system, batches, device, bf16)
    seconds, prof = time_and_profile(run, warm_up=run)
    print(f"dev scoring, {len(batches)} batches in file order, bf16={bf16}: {seconds:.2f} s")
    print_breakdown(prof)


def time_and_profile(run: Callable[[], None], warm_up: Callable[[], None]) -> tuple[float, profile]:
    """Seconds of one ``run`` after ``warm_up``, then the profile of another ``run``."""
    warm_up()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    with profile() as prof:
        run()
    return seconds, prof


def print_breakdown(prof: profile) -> None:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    attention = sum(e.self_cpu_time_total for e in events if ATTENTION in e.key)
    print(
        f"self CPU time in matrix products: {matmul / total:.1%}; attention kernels "
        f"{attention / total:.1%}; everything else {(total - matmul - attention) / total:.1%}"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
