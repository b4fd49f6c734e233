"""Pre-training speed and memory per objective (docs/PERFORMANCE.md, "Pre-training"): real
tokens per second of full training steps (forward, backward, AdamW) and the process's peak
RSS, each objective's shipped config in a process of its own.

    .venv/bin/python benchmarks/pretrain_throughput.py [--steps 40] [--warmup 5] [--threads 1]

Tokens are the real (non-padding) tokens the step's forward passes read: SimCSE unsup reads
every sentence twice, sup reads anchors, positives and the hard negatives there are. The
head warm-up is off, so every step trains the encoder. Prints one JSON line per objective.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from per_process import ROOT, peak_rss_mib, run_arms

CONFIGS = {
    "mlm": "configs/pretrain-mlm.toml",
    "simcse-unsup": "configs/pretrain-simcse-unsup.toml",
    "simcse-sup": "configs/pretrain-simcse-sup.toml",
}


def measure(name: str, steps: int, warmup: int, threads: int) -> dict:
    from minbert.config import load_config
    from minbert.train.trainer import Trainer

    overrides = [
        f"train.threads={threads}",
        "train.progress=false",
        "pretrain.head_warmup_steps=0",
        f"train.max_steps={steps + warmup}",
    ]
    config = load_config(ROOT / CONFIGS[name], overrides)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out) / "run")
        tokens = [0]
        for objective in trainer.objectives.values():
            original = objective.loss

            def counting(model, batch, original=original):
                tokens[0] += sum(int(s.attention_mask.sum()) for s in batch.segments)
                return original(model, batch)

            objective.loss = counting
        plan = [step for epoch in trainer.plans for step in epoch]
        for step in plan[:warmup]:
            trainer.train_step(step)
        tokens[0] = 0
        started = time.perf_counter()
        for step in plan[warmup : warmup + steps]:
            trainer.train_step(step)
        seconds = time.perf_counter() - started
    return {
        "objective": name,
        "steps": steps,
        "batch": config.train.batch_size,
        "seconds_per_step": round(seconds / steps, 3),
        "tokens_per_second": round(tokens[0] / seconds),
        "peak_rss_mib": peak_rss_mib(),
        "threads": threads,
        "bf16": trainer.bf16,
    }


def main() -> None:
    run_arms(__file__, __doc__, list(CONFIGS), measure, steps=40)


if __name__ == "__main__":
    main()
