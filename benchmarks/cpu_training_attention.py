"""CPU training steps with attention dropout 0: sdpa against the manual attention path.

CPU training takes the manual path (model/bert.py): with dropout, sdpa has no fused CPU
kernel; without it (``model.attention_dropout = 0``), this benchmark is why. It switches
sdpa back on for one of two identical models (``sdpa_in_cpu_training``) and times both on
the same padded SST-like batches (8 to 48 tokens, as SST's), alternating the two so that a
busy machine slows both alike.

    .venv/bin/python benchmarks/cpu_training_attention.py [--batch 32] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from minbert.bench.systems import System, build_minbert, train_step
from minbert.data.batching import Batch, pad_sequences
from minbert.model.bert import BertSelfAttention


def padded_batches(n: int, batch: int, vocab: int) -> list[tuple[str, Batch]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = [rng.integers(1, vocab, rng.integers(8, 49)) for _ in range(batch)]
        segment = pad_sequences(ids, [np.zeros_like(x) for x in ids])
        labels = torch.from_numpy(rng.integers(0, 5, batch))
        out.append(("sst", Batch([segment], labels, np.arange(batch))))
    return out


def system(attention: str) -> System:
    built = build_minbert("minilm-l6", attention, seed=0, attention_dropout=0.0)
    for module in built.model.modules():  # every attention layer, a head's own ones too
        if isinstance(module, BertSelfAttention):
            module.sdpa_in_cpu_training = attention == "sdpa"
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    systems = {name: system(name) for name in ("manual", "sdpa")}
    batches = padded_batches(args.steps, args.batch, 30522)
    device = torch.device("cpu")
    times: dict[str, list[float]] = {name: [] for name in systems}
    for s in systems.values():  # warm-up: oneDNN kernels for these shapes
        for task, b in batches[:5]:
            train_step(s, task, b, device, True)
    for _ in range(args.rounds):
        for name, s in systems.items():
            start = time.perf_counter()
            for task, b in batches:
                train_step(s, task, b, device, True)
            times[name].append((time.perf_counter() - start) / len(batches))
    for name, t in times.items():
        print(
            f"{name:6s}: {1e3 * min(t):.0f} ms per step (min of {args.rounds} rounds; all {[round(1e3 * x) for x in t]})"
        )
    print(f"sdpa / manual: {min(times['sdpa']) / min(times['manual']):.2f}x")


if __name__ == "__main__":
    main()
