"""The command line of ``minbert bench``: its options, and the ``BenchOptions`` they make.
The benchmark itself (``minbert.bench.throughput``) takes options, not arguments."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

from minbert.bench.options import QUICK, SETUPS, BenchOptions
from minbert.bench.systems import BenchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``minbert bench`` (and ``benchmarks/throughput.py``)."""
    defaults = BenchOptions()
    add = parser.add_argument
    add("--quick", action="store_true", help="fewer batches and repetitions (a few minutes)")
    add("--json", dest="json_path", metavar="PATH", help="write every figure as JSON here")
    add("--device", choices=["auto", "cpu", "cuda"], help=f"default: {defaults.device}")
    add("--model", help=f"pretrained model name or HF directory (default: {defaults.model})")
    add("--data-dir", help=f"folder of the task files (default: {defaults.data_dir})")
    add("--setups", nargs="+", choices=sorted(SETUPS), help="default: default best")
    add("--reps", type=int, help=f"alternating repetitions (default: {defaults.reps})")
    add("--batch-size", type=int, help=f"training batch size (default: {defaults.batch_size})")
    add("--eval-batch-size", type=int, help=f"default: {defaults.eval_batch_size}")
    add("--max-length", type=int, help=f"tokens per sequence (default: {defaults.max_length})")
    add("--train-steps", type=int, help=f"timed steps per run (default: {defaults.train_steps})")
    add("--warmup-steps", type=int, help=f"default: {defaults.warmup_steps}")
    add("--train-limit", type=int, help="rows read from each training file (default: all)")
    add("--dev-limit", type=int, help="rows scored of each dev set (default: all)")
    add("--fixed-batch", type=_batch_shape, metavar="BxT", help="default: 32x128")
    add("--fixed-steps", type=int, help=f"default: {defaults.fixed_steps}")
    add("--fixed-setups", nargs="+", choices=sorted(SETUPS), help="default: default best")
    add("--matmul-size", type=int, help="side of the peak matmul (default: 4096 CPU, 8192 CUDA)")
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add("--seed", type=int, help=f"default: {defaults.seed}")
    add("--ablate", action="store_true", help="also time minbert with each optimisation off")
    add(
        "--plain-allocator",
        action="store_true",
        default=None,
        help="leave glibc's malloc and oneDNN's cache at their defaults (for both systems: "
        "they share the process)",
    )
    add("--sweep", dest="sweep_png", metavar="PNG", help="also sweep length x batch; plot here")
    add("--sweep-only", action="store_true", help="only the sweep, no comparison")
    add("--sweep-setup", choices=sorted(SETUPS), help=f"default: {defaults.sweep_setup}")
    add("--sweep-lengths", type=int, nargs="+", help="default: 32 64 128 256 512")
    add("--sweep-batch-sizes", type=int, nargs="+", help="default: 8 16 32 64")
    add("--sweep-steps", type=int, help=f"default: {defaults.sweep_steps}")
    add("--sweep-reps", type=int, help=f"default: {defaults.sweep_reps}")


def _batch_shape(text: str) -> tuple[int, int]:
    try:
        batch, length = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BxT, e.g. 32x128") from None
    return batch, length


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Full-run defaults (or ``--quick``'s), then every option given on the command line."""
    base = replace(BenchOptions(), **QUICK) if args.quick else BenchOptions()
    given = {
        f.name: getattr(args, f.name)
        for f in fields(BenchOptions)
        if getattr(args, f.name, None) is not None and f.name != "quick"
    }
    for name in ("setups", "fixed_setups", "sweep_lengths", "sweep_batch_sizes"):
        if name in given:
            given[name] = tuple(given[name])
    if args.sweep_only:
        if not args.sweep_png:
            raise BenchError("--sweep-only needs --sweep PNG")
        given["compare"] = False
    return replace(base, **given)
