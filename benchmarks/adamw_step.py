"""Time one optimiser step over all MiniLM parameters: our AdamW against torch's three.

The update is memory-bound (weights, gradient and two moments, 22.7M floats each), so this is
the cost every training step pays after backward. Random gradients; 3 warm-up steps, then
the mean of 10. Run: ``.venv/bin/python benchmarks/adamw_step.py``.
"""

from __future__ import annotations

import time

import torch

from minbert.model.loading import load_pretrained
from minbert.train.optim import AdamW


def time_steps(optimizer: torch.optim.Optimizer, warmup: int = 3, steps: int = 10) -> float:
    for _ in range(warmup):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    encoder, _ = load_pretrained("minilm-l6")
    params = list(encoder.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    candidates = {
        "minbert AdamW": lambda: AdamW(params, lr=1e-5),
        "torch AdamW (single tensor)": lambda: torch.optim.AdamW(params, lr=1e-5, foreach=False),
        "torch AdamW (foreach)": lambda: torch.optim.AdamW(params, lr=1e-5, foreach=True),
        "torch AdamW (fused)": lambda: torch.optim.AdamW(params, lr=1e-5, fused=True),
    }
    print(f"threads: {torch.get_num_threads()}")
    for name, build in candidates.items():
        print(f"{name:30s} {time_steps(build()) * 1000:6.1f} ms per step")


if __name__ == "__main__":
    main()
