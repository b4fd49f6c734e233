"""What a new matmul shape costs on this CPU: a bf16 (autocast) linear layer of Q, K and V's
stacked shape (rows x 384 @ 384 x 1152) timed with the same row count every call, a new row
count every call, and row counts rounded up as ``packed_rows`` rounds them. oneDNN compiles
a kernel per shape and caches it (docs/PERFORMANCE.md, "packed row counts rounded up").

    .venv/bin/python benchmarks/new_shape_cost.py
"""

import time

import torch
import torch.nn.functional as F

from minbert.model.bert import packed_rows


def ms_per_call(inputs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> float:
    start = time.perf_counter()
    for x in inputs:
        F.linear(x, weight, bias)
    return (time.perf_counter() - start) / len(inputs) * 1e3


def main() -> None:
    torch.manual_seed(0)
    hidden, calls, base = 384, 100, 2000
    weight, bias = torch.randn(3 * hidden, hidden), torch.randn(3 * hidden)
    rows = torch.randn(base + 2 * calls, hidden)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        cases = {
            "same row count": [rows[:base]] * calls,
            "new row count each call": [rows[: base + i] for i in range(calls)],
            "row counts rounded (packed_rows)": [
                rows[: packed_rows(base + calls + i, 10**6)] for i in range(calls)
            ],
        }
        for name, inputs in cases.items():
            print(f"{name:34s} {ms_per_call(inputs, weight, bias):6.2f} ms per call")


if __name__ == "__main__":
    main()
