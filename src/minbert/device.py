"""Device, precision and thread choices, in one place."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import resource

import torch

from minbert import machine


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def fast_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16 support, or a CPU whose math libraries
    may use AMX or AVX512-BF16 (not one limited to AVX2 by the environment: machine.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return machine.effective_kind() in machine.BF16_KINDS


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "auto":
        return fast_bf16(device)
    return precision == "bf16"


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


MIB = 2**20


def process_peak_rss_mib() -> float:
    """The whole process's peak resident memory so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: the process's resident set, and on CUDA the allocator's peak."""
    peak = {"peak_rss_mib": round(process_peak_rss_mib())}
    if device.type == "cuda":
        peak["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB)
    return peak


@functools.cache
def c_library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc maps every block over its threshold (128 KiB, rising to at most 32 MiB)
    fresh and unmaps it on free, so each training step paid page faults to zero-fill tens of
    MiB again (the word embeddings' gradient alone is 47 MiB): during development a training
    step took 0.39 s with glibc's defaults and 0.33 s with these settings. Blocks up to 64 MiB
    now come from the heap, and at most 256 MiB of free memory is kept on its top. Returns
    False where the C library is not glibc (nothing is changed there).
    """
    libc = c_library()
    if libc is None or platform.libc_ver()[0] != "glibc":
        return False
    return all(
        libc.mallopt(option, value)
        for option, value in (
            # the largest per-step blocks (the word embeddings' gradient: 47 MiB for MiniLM)
            # come from the heap; larger, rarer ones (checkpoint buffers) are still mapped
            # and handed back, so they do not stay resident
            (_M_MMAP_THRESHOLD, 64 * MIB),
            (_M_TRIM_THRESHOLD, 256 * MIB),  # at most this much free memory kept on top
            (_M_TOP_PAD, 64 * MIB),
        )
    )


def limit_onednn_cache(capacity: int = 128) -> None:
    """Cap oneDNN's primitive cache (default 1,024 entries) unless the user set it.

    oneDNN keeps a compiled primitive, with its buffers, per matmul shape. Packed batches
    round their row counts (``packed_rows``) to a few dozen per run, but forward and backward
    products of each still fill hundreds of entries: over the main job's first 300 steps the
    peak RSS was 2,750 MiB with the default cache and 2,270 MiB with 128 entries, at the same
    step time; 64 entries made kernels be compiled again and again (docs/PERFORMANCE.md).
    oneDNN reads the variable when it first runs, so call this early.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def tune_memory() -> None:
    """What the CLI does first: keep freed memory (glibc) and cap oneDNN's cache."""
    keep_freed_memory()
    limit_onednn_cache()
