"""Where a minbert training step's time goes: torch.profiler's operator table for optimiser
steps on one fixed batch (default 32 x 128 tokens, bf16 autocast, the benchmark's SST head),
grouped into matrix products and everything else (docs/PERFORMANCE.md, "FLOP fraction").

    .venv/bin/python benchmarks/step_profile.py [--batch 32x128] [--steps 10] [--fp32]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import profile

from minbert.bench.systems import build_minbert, synthetic_batch, train_run
from minbert.train.device import keep_freed_memory

MATMULS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}
ATTENTION = "scaled_dot_product"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="32x128", help="BxT (default 32x128)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = parser.parse_args()
    keep_freed_memory()
    b, t = (int(x) for x in args.batch.split("x"))
    system = build_minbert("minilm-l6", "sdpa", seed=0)
    batches = [synthetic_batch(b, t, system.model.encoder.config.vocab_size)] * args.steps
    device, bf16 = torch.device("cpu"), not args.fp32
    train_run(system, batches[:3], device, bf16)  # warm-up: compiles, oneDNN kernels
    start = time.perf_counter()
    train_run(system, batches, device, bf16)
    per_step = (time.perf_counter() - start) / args.steps
    with profile() as prof:
        train_run(system, batches, device, bf16)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    attention = sum(e.self_cpu_time_total for e in events if ATTENTION in e.key)
    print(
        f"{args.batch}, bf16={bf16}: {per_step * 1e3:.0f} ms per step, {b * t / per_step:,.0f} tokens/s"
    )
    print(
        f"self CPU time in matrix products: {matmul / total:.1%}; attention kernels "
        f"{attention / total:.1%}; everything else {(total - matmul - attention) / total:.1%}"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
