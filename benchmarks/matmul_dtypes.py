"""What one square matmul reaches on this CPU in fp32, in bf16, and in fp32 under bf16
autocast (what training with ``precision = "bf16"`` runs), with the machine record (CPU
kind in effect, emulated or not). Shows whether an AVX2 emulation takes: there bf16 falls
to a fraction of fp32 (docs/PERFORMANCE.md, "AVX2-only CPUs").

    .venv/bin/python benchmarks/matmul_dtypes.py [--size 1024] [--threads 1] [--repeats 5]
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        .venv/bin/python benchmarks/matmul_dtypes.py
"""

from __future__ import annotations

import argparse
import time

import torch

from minbert import machine


def gflops(product, size: int, repeats: int) -> float:
    product()  # first call: kernel selection, packing buffers
    start = time.perf_counter()
    for _ in range(repeats):
        product()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(machine.label(machine.describe(cpu, False)), "| limits:", machine.caps() or "none")
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(args.size, args.size, generator=generator) for _ in range(2))
    a16, b16 = a.bfloat16(), b.bfloat16()

    def autocast_product():
        with torch.autocast("cpu", torch.bfloat16):
            return a @ b

    for name, product in (
        ("fp32", lambda: a @ b),
        ("bf16", lambda: a16 @ b16),
        ("fp32 under bf16 autocast", autocast_product),
    ):
        rate = gflops(product, args.size, args.repeats)
        print(f"{name}: {rate:.1f} GFLOP/s ({args.size}^3, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
