"""Which machine a number was measured on: the CPU model, its vector extensions (what the
hardware has, and what the math libraries are allowed to use), threads, precision and GPU.

The project runs on CPUs of three kinds whose speeds differ by 2x or more (AMX, AVX512-BF16,
AVX2 only), so every record that holds a timing (``metrics.jsonl``, ``final.json``, the
benchmark's JSON, the report) carries this description.

A faster CPU can be made to act as an AVX2-only one (docs/PERFORMANCE.md) with
``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``: the
extensions *in effect* are then the lowest of the hardware's and of those limits, and the
record says ``emulated``.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

# From least to most capable: the kinds this project tells apart.
KINDS = ("baseline", "AVX2", "AVX-512", "AVX512-BF16", "AMX")
BF16_KINDS = ("AVX512-BF16", "AMX")  # a native bf16 dot product: bf16 matmuls pay


def hardware_kind() -> str:
    """The most capable kind the CPU itself supports."""
    cpu = torch.cpu
    if cpu._is_amx_tile_supported():
        return "AMX"
    if cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    if cpu._is_avx512_supported():
        return "AVX-512"
    if cpu._is_avx2_supported():
        return "AVX2"
    return "baseline"


def _onednn_cap(value: str) -> str | None:
    # oneDNN's ISA names (its docs, "CPU dispatcher control"), the most capable first.
    value = value.upper()
    if value in ("", "ALL", "DEFAULT"):
        return None
    if "AMX" in value:
        return "AMX"
    if value.startswith(("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10")):
        return "AVX512-BF16"
    if value.startswith("AVX512"):
        return "AVX-512"
    if value.startswith("AVX2"):
        return "AVX2"
    return "baseline"  # SSE41, AVX


def _mkl_cap(value: str) -> str | None:
    # MKL's fp32 GEMM; its bf16 paths are not the ones autocast uses (oneDNN's).
    value = value.upper()
    if value == "" or value.startswith("AVX512"):
        return None
    if value.startswith("AVX2"):
        return "AVX2"
    return "baseline"  # SSE4_2, AVX


def _aten_cap(capability: str) -> str | None:
    # ATen's own vectorised kernels; it reports AVX512 on AMX machines too.
    return {"DEFAULT": "baseline", "AVX2": "AVX2"}.get(capability.upper())


def caps() -> dict[str, str]:
    """The limits in force, by where they come from (only those that limit anything)."""
    found = {
        "ATen": _aten_cap(torch.backends.cpu.get_cpu_capability()),
        "oneDNN": _onednn_cap(
            os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))
        ),
        "MKL": _mkl_cap(os.environ.get("MKL_ENABLE_INSTRUCTIONS", "")),
    }
    return {name: cap for name, cap in found.items() if cap is not None}


def effective_kind() -> str:
    """The kind the math libraries act as: the hardware's, lowered by any limit in force."""
    return min([hardware_kind(), *caps().values()], key=KINDS.index)


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device, bf16: bool) -> dict:
    """The machine as a record: what every timing is stored with."""
    kind, hardware = effective_kind(), hardware_kind()
    record = {
        "cpu": cpu_model(),
        "cpu_extensions": kind,
        "cpu_extensions_hardware": hardware,
        "emulated": kind != hardware,
        "threads": torch.get_num_threads(),
        "device": device.type,
        "precision": "bf16" if bf16 else "fp32",
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def extensions_text(record: dict) -> str:
    """``AVX512-BF16``, or ``AVX2 (emulated on AVX512-BF16)``."""
    kind = record.get("cpu_extensions", "unknown extensions")
    if record.get("emulated"):
        kind += f" (emulated on {record.get('cpu_extensions_hardware', '?')})"
    return kind


def kind_label(record: dict) -> str:
    """The machine kind alone: ``NVIDIA H200`` or ``AMD EPYC, AVX2 (emulated on ...)``."""
    return record.get("gpu") or f"{record.get('cpu', 'unknown CPU')}, {extensions_text(record)}"


def label(record: dict) -> str:
    """One line for logs and reports, e.g. ``AMD EPYC, AVX2 (emulated on AVX512-BF16),
    2 threads, fp32``."""
    kind = extensions_text(record)
    threads = record.get("threads")
    parts = [record.get("cpu", "unknown CPU"), kind, f"{threads} thread{'s' * (threads != 1)}"]
    if record.get("gpu"):
        parts.insert(0, record["gpu"])
    return ", ".join(parts) + f", {record.get('precision', '?')}"
