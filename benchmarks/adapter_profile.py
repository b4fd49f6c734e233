"""Where an adapter arm's training step goes: torch.profiler's operator table over steps of
the main job's schedule (docs/RESULTS.md, "Adapters"; the arms of benchmarks/adapters.py).

    .venv/bin/python benchmarks/adapter_profile.py lora-r8 [--steps 12] [--warmup 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from adapters import ARMS
from per_process import ROOT
from torch.profiler import profile


def main() -> None:
    from minbert.config import load_config
    from minbert.train.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arm", choices=sorted(ARMS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4, help="unprofiled steps first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=14, help="operators shown")
    args = parser.parse_args()
    path, sets = ARMS[args.arm]
    sets = [*sets, f"train.threads={args.threads}", "train.progress=false"]
    config = load_config(ROOT / path, [*sets, f"train.max_steps={args.warmup + args.steps}"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out) / "run")
        plan = [step for epoch in trainer.plans for step in epoch]
        for step in plan[: args.warmup]:
            trainer.train_step(step)
        with profile() as prof:
            for step in plan[args.warmup : args.warmup + args.steps]:
                trainer.train_step(step)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    print(table)


if __name__ == "__main__":
    main()
