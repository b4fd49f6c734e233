"""What ``minbert bench`` can be asked: the two setups, minbert's ablation variants, and
``BenchOptions`` (with ``QUICK``, the overrides of ``--quick``).

The definitions the other modules of the benchmark share; this module imports none of them
but ``systems.BenchError``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from minbert.bench.systems import BenchError

PEER = "transformers"  # how the peer is named in tables


@dataclass(frozen=True)
class Setup:
    name: str
    peer_attention: str | None  # transformers' attn_implementation; None: its default
    bf16: bool
    group_lengths: bool  # length-grouped training batches and length-sorted scoring

    @property
    def dtype(self) -> str:
        return "bf16" if self.bf16 else "fp32"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SETUPS = {
    "default": Setup("default", peer_attention=None, bf16=False, group_lengths=False),
    "best": Setup("best", peer_attention="sdpa", bf16=True, group_lengths=True),
}


@dataclass(frozen=True)
class Variant:
    """minbert's settings in one ablation run: the best setup has every field at its default."""

    attention: str = "sdpa"
    bf16: bool = True
    grouped: bool = True
    fast_dropout: bool = True  # model/dropout.py
    stacked_projections: bool = True  # one matmul for Q, K and V
    first_token_only: bool = True  # cls/pooler heads: the last layer computes [CLS] alone
    packed: bool = True  # per-token work on real tokens alone
    compiled_optimizer: bool = True  # AdamW's update as one torch.compile'd kernel per tensor


# minbert alone, the best setup with one optimisation off at a time.
ABLATIONS = {
    "best": Variant(),
    "manual attention": Variant(attention="manual"),
    "fp32": Variant(bf16=False),
    "random batches": Variant(grouped=False),
    "torch's dropout mask": Variant(fast_dropout=False),
    "separate Q, K, V matmuls": Variant(stacked_projections=False),
    "all tokens in the last layer": Variant(first_token_only=False),
    "padding computed too": Variant(packed=False),
    "eager AdamW update": Variant(compiled_optimizer=False),
}


def machine_setup(name: str, bf16_fast: bool) -> Setup:
    """Setup ``name`` as this machine runs it: bf16 only where bf16 matmuls are fast. Where
    they are not (AVX2-only CPUs), bf16 autocast is hundreds of times slower than fp32
    (docs/PERFORMANCE.md) and would make "best" the slowest setup, as training with
    ``precision = "auto"`` never would."""
    setup = SETUPS[name]
    return setup if bf16_fast or not setup.bf16 else replace(setup, bf16=False)


def machine_ablations(bf16_fast: bool) -> dict[str, Variant]:
    """``ABLATIONS`` as this machine runs them: without fast bf16 the best setup is fp32
    already, so the "fp32" variant would repeat it."""
    if bf16_fast:
        return ABLATIONS
    return {name: replace(v, bf16=False) for name, v in ABLATIONS.items() if name != "fp32"}


@dataclass(frozen=True)
class BenchOptions:
    model: str = "minilm-l6"
    data_dir: str = "data"
    device: str = "auto"
    setups: tuple[str, ...] = ("default", "best")
    reps: int = 5
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    train_steps: int = 30  # timed optimiser steps per run (tasks take turns)
    warmup_steps: int = 3  # untimed steps per system before a setup's first training run
    train_limit: int = 0  # rows read from each training file (0: all)
    dev_limit: int = 0  # rows scored of each dev set (0: all)
    fixed_batch: tuple[int, int] = (32, 128)  # batch x length of the FLOP-fraction measurement
    fixed_steps: int = 3
    fixed_setups: tuple[str, ...] = ("default", "best")
    matmul_size: int = 0  # 0: 8192 on CUDA, 4096 on CPU (2048 with quick)
    threads: int = 0  # torch CPU threads (0: torch's default)
    seed: int = 0
    quick: bool = False
    compare: bool = True  # the minbert / transformers comparison (off: only the sweep)
    ablate: bool = False
    sweep_png: str = ""  # where the sweep's plot goes ("": no sweep)
    plain_allocator: bool = False  # glibc's malloc defaults (minbert's CLI tunes it: device.py)
    sweep_setup: str = "best"
    sweep_lengths: tuple[int, ...] = (32, 64, 128, 256, 512)
    sweep_batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    sweep_steps: int = 1  # timed steps per run of a sweep point
    sweep_reps: int = 3
    json_path: str = ""

    def __post_init__(self) -> None:
        for name in (*self.setups, *self.fixed_setups, self.sweep_setup):
            if name not in SETUPS:
                raise BenchError(f"unknown setup {name!r}; known: {sorted(SETUPS)}")
        if self.reps < 1 or self.train_steps < 1 or self.fixed_steps < 1:
            raise BenchError("reps, train_steps and fixed_steps must be at least 1")


# ``--quick``: the same measurements on fewer batches, under a minute on an idle 2-core CPU.
QUICK = {
    "reps": 3,
    "train_steps": 3,
    "warmup_steps": 1,
    "train_limit": 2000,
    "dev_limit": 32,
    "fixed_steps": 1,
    "fixed_setups": ("best",),
    "sweep_lengths": (32, 128, 512),
    "sweep_batch_sizes": (8, 32),
    "sweep_steps": 1,
    "sweep_reps": 1,
    "quick": True,
}
