"""The machine record (machine.py): the CPU kind in effect under ISA limits, and every run
record naming its machine."""

import json

import pytest
import torch
from tiny_run import run_config

from minbert import machine
from minbert.device import fast_bf16, use_bf16
from minbert.eval.report import write_report
from minbert.train.trainer import Trainer

CPU = torch.device("cpu")
LIMITS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with AVX512-BF16 (not AMX) and no limits in the environment."""
    for name in LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    return monkeypatch


def test_unlimited_cpu_is_its_hardware_kind_and_chooses_bf16(bf16_cpu):
    assert machine.effective_kind() == "AVX512-BF16" and machine.caps() == {}
    record = machine.describe(CPU, use_bf16("auto", CPU))
    assert record["precision"] == "bf16" and record["emulated"] is False


def test_avx2_emulation_is_recorded_and_auto_precision_stays_fp32(bf16_cpu):
    # The emulation docs/PERFORMANCE.md describes. oneDNN would run bf16 matmuls without its
    # bf16 instructions, so "auto" must not choose bf16 (it did before machine.py).
    bf16_cpu.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    bf16_cpu.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    bf16_cpu.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not fast_bf16(CPU) and not use_bf16("auto", CPU)
    record = machine.describe(CPU, False)
    assert record["cpu_extensions"] == "AVX2" and record["cpu_extensions_hardware"] == "AVX512-BF16"
    assert record["emulated"] is True
    assert machine.caps() == {"ATen": "AVX2", "oneDNN": "AVX2", "MKL": "AVX2"}
    assert "AVX2 (emulated on AVX512-BF16)" in machine.label(record)


@pytest.mark.parametrize(
    "name, value, kind",
    [
        ("ONEDNN_MAX_CPU_ISA", "avx2_vnni", "AVX2"),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", "AVX-512"),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", "AVX512-BF16"),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", "AVX512-BF16"),  # never above the hardware
        ("ONEDNN_MAX_CPU_ISA", "ALL", "AVX512-BF16"),
        ("DNNL_MAX_CPU_ISA", "SSE41", "baseline"),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX2", "AVX2"),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX512", "AVX512-BF16"),
    ],
)
def test_each_limit_lowers_the_kind_to_its_own(bf16_cpu, name, value, kind):
    bf16_cpu.setenv(name, value)
    assert machine.effective_kind() == kind


def test_only_one_limit_among_three_is_enough_to_stop_bf16(bf16_cpu):
    bf16_cpu.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert machine.effective_kind() == "AVX-512" and not fast_bf16(CPU)


def test_every_record_of_a_run_names_its_machine(tiny_setup, tmp_path):
    run = tmp_path / "run"
    Trainer(run_config(tiny_setup, "train.max_steps=3", "train.threads=1"), run).run()
    expected = machine.describe(CPU, False)  # the tiny run is fp32
    assert expected["threads"] == 1
    final = json.loads((run / "final.json").read_text())
    assert final["machine"] == expected
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["machine"] == expected for r in records)
    summary = (write_report(run) / "summary.md").read_text()
    assert f"machine: {machine.label(expected)}" in summary


def test_kind_labels_name_the_gpu_or_the_cpu_and_its_extensions():
    cpu = {"cpu": "AMD EPYC", "cpu_extensions": "AVX2", "cpu_extensions_hardware": "AVX512-BF16"}
    assert (
        machine.kind_label(cpu | {"emulated": True}) == "AMD EPYC, AVX2 (emulated on AVX512-BF16)"
    )
    assert machine.kind_label(cpu | {"emulated": False}) == "AMD EPYC, AVX2"
    assert machine.kind_label(cpu | {"gpu": "NVIDIA H200"}) == "NVIDIA H200"
