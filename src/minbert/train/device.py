"""Device, precision and thread choices, in one place."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def fast_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16 support, or a CPU with AMX / AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "auto":
        return fast_bf16(device)
    return precision == "bf16"


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
