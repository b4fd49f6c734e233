"""One rank of a test's torchrun launch: ``minbert train`` through the real command line, with
test-only changes chosen by the options before ``--``:

  --double           the model in float64 (exactness against a one-process run)
  --kill R:S         rank R kills itself (SIGKILL) as it starts step S
  --watch DIR        ranks other than 0 fail on any write under DIR
  --rank1-set K=V    rank 1 alone gets one more --set (a config that differs between ranks)
  --pause S          rank 0 sleeps S seconds before each step (time for a test to signal)
  --fail-build R     rank R alone fails while it reads its inputs
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from minbert.cli import main
from minbert.train.trainer import Trainer

RANK = int(os.environ["RANK"])


def in_float64() -> None:
    build = Trainer._build

    def _build(self, *args):
        build(self, *args)
        self.model.double()

    Trainer._build = _build


def kill_at(rank: int, step: int) -> None:
    train_step = Trainer.train_step

    def _train_step(self, plan):
        if (RANK, self.state.step + 1) == (rank, step):
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(self, plan)

    Trainer.train_step = _train_step


def pause_each_step(seconds: float) -> None:
    train_step = Trainer.train_step

    def _train_step(self, plan):
        if RANK == 0:
            time.sleep(seconds)
        return train_step(self, plan)

    Trainer.train_step = _train_step


def fail_build(rank: int) -> None:
    build = Trainer._build

    def _build(self, *args):
        if rank == RANK:
            raise FileNotFoundError(f"rank {RANK} cannot read its data (injected)")
        build(self, *args)

    Trainer._build = _build


def forbid_writes(folder: Path) -> None:
    """An audit hook: opening a file under ``folder`` for writing, or making, renaming or
    removing anything there, raises."""
    folder = str(folder.resolve())
    writing = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree"}

    def under(path) -> bool:
        try:
            return str(Path(os.fsdecode(path)).resolve()).startswith(folder)
        except (TypeError, ValueError):
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) > 2:
            path, mode, flags = args[:3]
            if isinstance(mode, str):
                writes = any(c in mode for c in "wax+")
            else:
                writes = bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes and under(path):
                raise PermissionError(f"rank {RANK} wrote {path}")
        elif event in writing and args and under(args[0]):
            raise PermissionError(f"rank {RANK}: {event} {args[0]}")

    sys.addaudithook(hook)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--double", action="store_true")
    parser.add_argument("--kill")
    parser.add_argument("--watch", type=Path)
    parser.add_argument("--rank1-set")
    parser.add_argument("--pause", type=float)
    parser.add_argument("--fail-build", type=int)
    options, argv = parser.parse_known_args()
    argv = argv[1:] if argv[:1] == ["--"] else argv
    if options.double:
        in_float64()
    if options.kill:
        rank, step = map(int, options.kill.split(":"))
        kill_at(rank, step)
    if options.fail_build is not None:
        fail_build(options.fail_build)
    if options.pause:
        pause_each_step(options.pause)
    if options.watch and RANK != 0:
        forbid_writes(options.watch)
    if options.rank1_set and RANK == 1:
        argv += ["--set", options.rank1_set]
    sys.exit(main(argv))
