"""Adapters against full fine-tuning in the main job's setting (docs/RESULTS.md, "Adapters"):
trainable and total parameters, the size of ``best/model.safetensors`` as the run saves it,
seconds per training step (forward, backward, AdamW; the main job's schedule and batches) and
the process's peak RSS, each arm in a process of its own.

    .venv/bin/python benchmarks/adapters.py [--steps 30] [--warmup 5] [--threads 1]

Prints one JSON line per arm.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from per_process import ROOT, peak_rss_mib, run_arms

ARMS = {
    "full": ("configs/default.toml", []),
    "lora-r8": ("configs/lora.toml", []),
    "lora-r16": ("configs/lora.toml", ["adapter.lora.r=16", "adapter.lora.alpha=32"]),
    "lora+full": ("configs/lora.toml", ["adapter.train_base=true"]),
    "molora": ("configs/molora.toml", []),
    "molora-routed": ("configs/molora.toml", ["adapter.molora.router=token"]),
    "pals": ("configs/pals.toml", []),
    "pals-frozen": ("configs/pals.toml", ["adapter.train_base=false"]),
}


def measure(arm: str, steps: int, warmup: int, threads: int) -> dict:
    path, sets = ARMS[arm]
    return measure_config(arm, path, sets, steps, warmup, threads)


def measure_config(
    arm: str, path: str, sets: list[str], steps: int, warmup: int, threads: int
) -> dict:
    """The figures of one arm: the config at ``path`` with the ``--set`` overrides ``sets``."""
    from minbert.config import load_config
    from minbert.run.model_dir import save_model_dir
    from minbert.train.trainer import Trainer

    overrides = [*sets, f"train.threads={threads}", "train.progress=false"]
    config = load_config(ROOT / path, [*overrides, f"train.max_steps={steps + warmup}"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out) / "run")
        plan = [step for epoch in trainer.plans for step in epoch]
        for step in plan[:warmup]:
            trainer.train_step(step)
        started = time.perf_counter()
        for step in plan[warmup : warmup + steps]:
            trainer.train_step(step)
        seconds = time.perf_counter() - started
        model = trainer.model
        save_model_dir(model, trainer.tokenizer, config, Path(out) / "best", {})
        size = (Path(out) / "best" / "model.safetensors").stat().st_size
    return {
        "arm": arm,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint_mib": round(size / 2**20, 2),
        "steps": steps,
        "seconds_per_step": round(seconds / steps, 3),
        "peak_rss_mib": peak_rss_mib(),
        "threads": threads,
        "bf16": trainer.bf16,
    }


def main() -> None:
    run_arms(__file__, __doc__, list(ARMS), measure, steps=30)


if __name__ == "__main__":
    main()
