"""One process with T threads against T processes with one thread each (torchrun, gloo): the
main job's training steps in real tokens/s, the same steps and rows both ways, and its dev
scoring done by rank 0 alone or sharded over the ranks (docs/PERFORMANCE.md, "Several
processes").

    .venv/bin/python benchmarks/ddp_throughput.py [--ranks 2] [--steps 80] [--reps 2]

Runs alternate (1 process, then torchrun, ...) so that drift of the machine hits both alike.
Each run: the trainer built on configs/default.toml, ``--warmup`` steps (the compiled AdamW
update, allocator warm-up), then ``--steps`` timed optimiser steps of the first epoch's
plan, then the three dev sets scored.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    from minbert.config import load_config
    from minbert.device import resolve_device
    from minbert.eval.evaluate import evaluate
    from minbert.train.distributed import join
    from minbert.train.trainer import Trainer

    sets = [*args.set, "train.progress=false", f"train.threads={args.threads}"]
    config = load_config(args.config, sets)
    world = join(resolve_device(config.train.device), 600)
    trainer = Trainer(config, args.out, overwrite=True, world=world)
    plan = trainer.plans[0][: args.warmup + args.steps]
    tokens = step_tokens(trainer, plan)[args.warmup :]
    for step in plan[: args.warmup]:
        trainer.train_step(step)
    summing = time_gradient_sums(world)
    world.max_int(0)  # every rank starts the clock together
    started = time.perf_counter()
    for step in plan[args.warmup :]:
        trainer.train_step(step)
    world.max_int(0)
    train_seconds = time.perf_counter() - started

    cfg = config.train
    score = lambda data: evaluate(  # noqa: E731
        trainer.model, data, cfg.eval_batch_size, trainer.device, trainer.bf16
    )
    timings = {}
    if world.distributed:  # each rank scores its share of every dev set, then rank 0 alone
        shards = {
            t: d.subset(world.shard(np.arange(len(d))), "dev") for t, d in trainer.dev_data.items()
        }
        world.max_int(0)
        started = time.perf_counter()
        score(shards)
        world.max_int(0)
        timings["sharded"] = time.perf_counter() - started
        if world.is_main:
            started = time.perf_counter()
            score(trainer.dev_data)
            timings["rank 0, 1 thread"] = time.perf_counter() - started
            with world.all_local_threads(trainer.device):
                started = time.perf_counter()
                score(trainer.dev_data)
                timings["rank 0, every rank's threads"] = time.perf_counter() - started
        world.max_int(0)
    else:
        started = time.perf_counter()
        score(trainer.dev_data)
        timings["one process"] = time.perf_counter() - started
    if world.is_main:
        result = {
            "ranks": world.size,
            "threads": torch.get_num_threads(),
            "steps": len(tokens),
            "tokens": int(sum(tokens)),
            "train_seconds": round(train_seconds, 2),
            "tokens_per_second": round(sum(tokens) / train_seconds, 1),
            "gradient_sum_ms_per_step": round(1000 * summing["seconds"] / len(tokens), 1),
            "dev_seconds": {k: round(v, 2) for k, v in timings.items()},
        }
        Path(args.result).write_text(json.dumps(result))
    world.leave()


def time_gradient_sums(world) -> dict[str, float]:
    """Rank 0's time in ``World.sync_gradients`` (the all-reduces of the gradients)."""
    spent = {"seconds": 0.0}
    sync = world.sync_gradients

    def timed(*args) -> None:
        started = time.perf_counter()
        sync(*args)
        spent["seconds"] += time.perf_counter() - started

    object.__setattr__(world, "sync_gradients", timed)  # World is a frozen dataclass
    return spent


def step_tokens(trainer, plan: list[dict[str, int]]) -> list[int]:
    """The real (unpadded) tokens of each step, from a copy of the data streams."""
    streams = copy.deepcopy(trainer.streams)
    counts = []
    for step in plan:
        n = 0
        for name, size in step.items():
            stream = streams[trainer.objectives[name].source]
            rows = stream.take_rows(size)
            n += sum(int(sum(len(part[r]) for part in stream.data.sequences)) for r in rows)
        counts.append(n)
    return counts


def launch(args: argparse.Namespace, ranks: int, folder: Path) -> dict:
    result = folder / f"result-{ranks}.json"
    common = [
        str(Path(__file__).resolve()),
        "--worker",
        "--config",
        args.config,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--out",
        str(folder / f"run-{ranks}"),
        "--result",
        str(result),
        *[x for s in args.set for x in ("--set", s)],
    ]
    if ranks == 1:
        command = [sys.executable, *common, "--threads", str(args.ranks)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            *common,
            "--threads",
            "1",
        ]
    env = os.environ | {"OMP_NUM_THREADS": "1" if ranks > 1 else str(args.ranks)}
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override")
    parser.add_argument("--ranks", type=int, default=2, help="processes (and threads) to compare")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs: dict[int, list[dict]] = {1: [], args.ranks: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):
            for ranks in runs:
                runs[ranks].append(launch(args, ranks, Path(tmp)))
                print(json.dumps(runs[ranks][-1]), flush=True)
    print(f"\n| setup | tokens/s (median of {args.reps}) | runs | dev scoring (s) |")
    print("|---|---|---|---|")
    for ranks, results in runs.items():
        rates = [r["tokens_per_second"] for r in results]
        label = (
            f"1 process × {args.ranks} threads" if ranks == 1 else f"{ranks} processes × 1 thread"
        )
        dev = {
            k: statistics.median(r["dev_seconds"][k] for r in results)
            for k in results[0]["dev_seconds"]
        }
        dev_text = "; ".join(f"{k} {v:.1f}" for k, v in dev.items())
        print(
            f"| {label} | {statistics.median(rates):.0f} | {', '.join(f'{r:.0f}' for r in rates)} | {dev_text} |"
        )


if __name__ == "__main__":
    main()
