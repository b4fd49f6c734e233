"""The measuring instruments: wall time, peak memory, FLOP counts, matmul peak, statistics.

Nothing here knows either system; everything is a pure function or a small probe, so the
arithmetic is tested on its own (tests/test_bench.py).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from minbert.device import MIB, c_library, process_peak_rss_mib
from minbert.model.bert import BertModel

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")

FLOP_FORMULA = (
    "training FLOPs of a padded segment of B sequences x T tokens = 6*N*B*T + 12*L*H*B*T^2; "
    "inference = 2*N*B*T + 4*L*H*B*T^2. N = parameters of the L transformer layers "
    "(embeddings, pooler and heads excluded: they act on one row or one token per sequence), "
    "H = hidden size. 6*N*B*T is 2 FLOPs per weight per token forward and 4 backward; "
    "4*L*H*B*T^2 is Q K^T and the attention-weighted sum of V forward, tripled for training. "
    "Counted as each system computes: the peer on padded tokens; minbert runs the per-token "
    "work of a padded batch on its real tokens alone, and for heads that read [CLS] alone "
    "(all of them in the benchmark) its last layer computes keys and values for every token "
    "and the rest for [CLS], so its count is that work. Attention is counted padded for both."
)


# -- FLOPs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formulas need to know about an encoder."""

    layer_params: int  # N: parameters of the transformer layers
    num_layers: int  # L
    hidden_size: int  # H

    @classmethod
    def of(cls, encoder: BertModel) -> ModelShape:
        return cls(
            layer_params=sum(p.numel() for p in encoder.encoder.layer.parameters()),
            num_layers=encoder.config.num_hidden_layers,
            hidden_size=encoder.config.hidden_size,
        )


def training_flops(
    shape: ModelShape,
    batch: int,
    length: int,
    first_token_only: bool = False,
    tokens: int | None = None,
) -> float:
    """FLOPs of one forward + backward over ``batch`` sequences of ``length`` tokens: three
    times the forward's (the backward computes two products per product of the forward)."""
    return 3 * inference_flops(shape, batch, length, first_token_only, tokens)


def inference_flops(
    shape: ModelShape,
    batch: int,
    length: int,
    first_token_only: bool = False,
    tokens: int | None = None,
) -> float:
    """FLOPs of one forward over ``batch`` sequences of ``length`` tokens.

    ``tokens``: how many tokens the per-token work (projections, feed-forward) runs on;
    ``batch * length`` by default, the real tokens alone for minbert's packed batches.
    ``first_token_only``: the last layer computes keys and values for every token but
    queries, attention output and feed-forward for the first token alone (BertModel's
    ``first_token_only``). Attention's T x T products are always counted padded.
    """
    tokens = batch * length if tokens is None else tokens
    per_layer = shape.layer_params / shape.num_layers
    layer_tokens = 2 * per_layer * tokens
    layer_attention = 4 * shape.hidden_size * batch * length**2
    if not first_token_only:
        return float(shape.num_layers * (layer_tokens + layer_attention))
    key_value = 2 * (shape.hidden_size**2 + shape.hidden_size)  # their weights and biases
    last = 2 * key_value * tokens + 2 * (per_layer - key_value) * batch
    last += 4 * shape.hidden_size * batch * length  # one query row against T keys
    return float((shape.num_layers - 1) * (layer_tokens + layer_attention) + last)


# -- time and the device's peak ------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work: CUDA calls return before the kernels finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(work: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` (size x size) @ (size x size) products in ``dtype``.

    The best run, not the median: a peak is what the hardware can do when nothing interferes.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    a @ b  # first call: kernel selection and allocation, not timed
    best = min(seconds_of(lambda: a @ b, device) for _ in range(repeats))
    return 2.0 * size**3 / best


# -- memory ---------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A ``VmHWM``/``VmRSS``-style field of /proc/self/status in KiB (None off Linux)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def return_free_memory_to_os() -> None:
    """Give memory freed by earlier runs back to the OS (glibc's ``malloc_trim``).

    Without it, a run's RSS growth measures how much the allocator still had cached from
    the other system's run, not what this run needed.
    """
    libc = c_library()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of one run: resident set (RSS) and, on CUDA, the allocator's maximum.

    On Linux, writing 5 to /proc/self/clear_refs resets the RSS high-water mark, so each run
    gets its own peak though both systems share the process. Where that is not possible the
    peak is the process's so far and ``rss_scope`` says so. ``rss_growth_mib`` (peak minus
    what was resident when the run began, after freed memory went back to the OS) is the
    memory the run itself needs on top of the weights: activations, gradients, temporaries.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start_rss_kib: int | None = None
        self.scope = "process"

    def start(self) -> None:
        return_free_memory_to_os()
        try:
            PROC_CLEAR_REFS.write_text("5")
            self.scope = "run"
        except OSError:
            self.scope = "process"
        self.start_rss_kib = _status_kib("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> dict[str, float | str]:
        peak_kib = _status_kib("VmHWM")
        peak = peak_kib / 1024 if peak_kib is not None else process_peak_rss_mib()
        out: dict[str, float | str] = {"peak_rss_mib": peak, "rss_scope": self.scope}
        if self.scope == "run" and peak_kib is not None and self.start_rss_kib is not None:
            out["rss_growth_mib"] = (peak_kib - self.start_rss_kib) / 1024
        if self.device.type == "cuda":
            out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
        return out


@dataclass
class Run:
    """One timed run of one contestant."""

    seconds: float
    memory: dict[str, float | str]


def timed_run(work: Callable[[], object], device: torch.device) -> Run:
    probe = PeakMemory(device)
    probe.start()
    seconds = seconds_of(work, device)
    return Run(seconds, probe.stop())


def alternating_runs(
    contestants: dict[str, Callable[[], object]],
    reps: int,
    device: torch.device,
    on_run: Callable[[str, int, Run], None] | None = None,
) -> dict[str, list[Run]]:
    """``reps`` timed runs of every contestant, taking turns run by run.

    Who goes first rotates from one repetition to the next, so a slow start, a warming
    machine or a neighbour's load hits every contestant alike; repetition ``i`` of each
    contestant forms a pair (or group) whose ratio cancels what they shared.
    """
    names = list(contestants)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            run = timed_run(contestants[name], device)
            runs[name].append(run)
            if on_run is not None:
                on_run(name, rep, run)
    return runs


# -- statistics -----------------------------------------------------------------------------------


def summarise(values: list[float]) -> dict[str, float]:
    """Median and spread of repeated measurements; ``spread`` = (max - min) / median."""
    median = statistics.median(values)
    low, high = min(values), max(values)
    return {
        "median": median,
        "min": low,
        "max": high,
        "spread": (high - low) / median if median else float("nan"),
        "n": len(values),
    }


def pair_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Ratio of each pair of rates measured side by side: ``numerator[i] / denominator[i]``."""
    return [n / d for n, d in zip(numerator, denominator, strict=True)]
