"""The command line the training-step benchmarks share: every arm in a process of its own
(each its own peak RSS), or ``--only ARM`` in this one; one JSON line an arm."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_arms(
    script: str, doc: str, arms: list[str], measure: Callable[..., dict], steps: int
) -> None:
    """``measure(arm, steps, warmup, threads)`` for one arm (``--only``) or each in turn."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=sorted(arms), help="one arm, in this process")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.steps, args.warmup, args.threads)), flush=True)
        return
    for arm in arms:
        command = [sys.executable, script, "--only", arm, "--steps", str(args.steps)]
        command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
        subprocess.run(command, check=True, cwd=ROOT)
