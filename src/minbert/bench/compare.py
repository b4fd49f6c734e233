"""The comparison of minbert and transformers, setup by setup: building the two systems
alike, checking they compute the same function, timing each phase (training, inference, the
fixed batch) in alternating runs and summarising them, the headline ratios, and the
environment the figures were measured in."""

from __future__ import annotations

import datetime
import gc
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from minbert import machine
from minbert.bench.ablation import run_ablation
from minbert.bench.measure import (
    FLOP_FORMULA,
    ModelShape,
    Run,
    alternating_runs,
    matmul_peak,
    pair_ratios,
    seconds_of,
    summarise,
)
from minbert.bench.options import DTYPES, BenchOptions, Setup, machine_setup
from minbert.bench.systems import (
    TASK_NAMES,
    BenchData,
    BenchError,
    System,
    TaskBatch,
    build_minbert,
    build_peer,
    count_work,
    import_transformers,
    load_bench_data,
    max_output_difference,
    minbert_attention_like,
    score_run,
    scoring_batches,
    synthetic_batch,
    train_run,
    training_batches,
)
from minbert.device import fast_bf16
from minbert.model.loading import load_pretrained

log = logging.getLogger(__name__)

SAME_OUTPUT_TOLERANCE = 1e-3  # fp32 outputs of the two systems on the same batch


def compare_systems(options: BenchOptions, device: torch.device) -> dict:
    encoder, tokenizer = load_pretrained(options.model)
    shape = ModelShape.of(encoder)
    del encoder
    data = load_bench_data(
        options.data_dir, tokenizer, options.max_length, options.train_limit, options.dev_limit
    )
    bf16_fast = fast_bf16(device)
    used = {s: machine_setup(s, bf16_fast) for s in options.setups} if options.compare else {}
    size = matmul_size(options, device)
    peaks = {}
    for dtype in sorted({s.dtype for s in used.values()}):
        peaks[dtype] = matmul_peak(device, DTYPES[dtype], size)
        log.info("matmul peak %s (%d^3): %.3g FLOP/s", dtype, size, peaks[dtype])
    out: dict = {
        "flop_formula": FLOP_FORMULA,
        "model_shape": asdict(shape),
        "matmul_size": size,
        "matmul_peak_flops": peaks,
        "setups": {},
    }
    if options.compare:
        for name in options.setups:
            out["setups"][name] = bench_setup(used[name], options, data, shape, peaks, device)
            release_memory(device)
        out.update(headline_ratios(out["setups"]))
    if options.ablate:
        out["ablation"] = run_ablation(options, data, shape, device)
        release_memory(device)
    return out


def matmul_size(options: BenchOptions, device: torch.device) -> int:
    if options.matmul_size:
        return options.matmul_size
    if device.type == "cuda":
        return 8192
    return 2048 if options.quick else 4096


def build_systems(
    setup: Setup, options: BenchOptions, device: torch.device
) -> tuple[System, System]:
    """minbert and the peer for ``setup``, on ``device``, computing the same function.

    Where the setup leaves the peer its default attention, minbert takes the matching
    implementation (sdpa, or manual for transformers' eager), so both are configured alike.
    """
    minbert = build_minbert(options.model, "sdpa", options.seed)
    peer = build_peer(options.model, setup.peer_attention, minbert.model)
    minbert.attention = minbert_attention_like(peer.attention)
    minbert.model.set_attention(minbert.attention)
    minbert.model.to(device)
    peer.model.to(device)
    return minbert, peer


def check_same_function(
    minbert: System, peer: System, data: BenchData, device: torch.device
) -> float:
    """The largest fp32 output difference on a few dev rows of each task; an error if the two
    systems do not compute the same function (the ratios would compare different models)."""
    probe = [(t, data.dev[t].batch(np.arange(min(8, len(data.dev[t]))))) for t in TASK_NAMES]
    diff = max_output_difference(minbert, peer, probe, device)
    if diff > SAME_OUTPUT_TOLERANCE:
        raise BenchError(
            f"minbert and transformers disagree by {diff:.2e} (> {SAME_OUTPUT_TOLERANCE}) on "
            "the same batch: the comparison would not be of the same model"
        )
    return diff


@dataclass
class Phase:
    """One timed measurement: each system runs ``run`` over ``batches``."""

    label: str
    run: Callable[[System, list[TaskBatch], torch.device, bool], None]
    batches: list[TaskBatch]
    warmup: list[TaskBatch]  # run once, untimed, by each system first
    units: tuple[str, ...]  # Work fields reported per second; the first gives the ratio
    flops: str  # the Work field of its FLOPs: train_flops or infer_flops


def bench_setup(
    setup: Setup,
    options: BenchOptions,
    data: BenchData,
    shape: ModelShape,
    peaks: dict[str, float],
    device: torch.device,
) -> dict:
    minbert, peer = build_systems(setup, options, device)
    systems = {"minbert": minbert, "peer": peer}
    result: dict = {
        "attention": {"minbert": minbert.attention, "peer": peer.attention},
        "dtype": setup.dtype,
        "batches": "length-grouped" if setup.group_lengths else "random",
        "max_output_difference_fp32": check_same_function(minbert, peer, data, device),
    }
    train = training_batches(
        data.train,
        options.train_steps,
        options.batch_size,
        setup.group_lengths,
        options.seed,
        minbert.model,
    )
    dev = scoring_batches(data.dev, options.eval_batch_size, setup.group_lengths)
    phases = {
        "train": Phase(
            f"{setup.name} train",
            train_run,
            train,
            train[: options.warmup_steps],
            ("real_tokens", "padded_tokens"),
            "train_flops",
        ),
        "infer": Phase(
            f"{setup.name} infer",
            score_run,
            dev,
            dev[:2],
            ("sentences", "examples", "real_tokens"),
            "infer_flops",
        ),
    }
    if setup.name in options.fixed_setups:
        b, t = options.fixed_batch
        fixed = synthetic_batch(b, t, minbert.model.encoder.config.vocab_size)
        phases["fixed"] = Phase(
            f"{setup.name} train {b}x{t}",
            train_run,
            [fixed] * options.fixed_steps,
            [fixed],
            ("real_tokens",),
            "train_flops",
        )
    for key, phase in phases.items():
        result[key] = measure_phase(
            phase, systems, setup.bf16, shape, peaks[setup.dtype], options.reps, device
        )
    if "fixed" in result:
        result["fixed"]["batch"] = list(options.fixed_batch)
    return result


def measure_phase(
    phase: Phase,
    systems: dict[str, System],
    bf16: bool,
    shape: ModelShape,
    peak: float,
    reps: int,
    device: torch.device,
) -> dict:
    """Warm each system up, time ``reps`` alternating runs, and summarise them."""
    warmup_seconds = sum(
        seconds_of(lambda s=system: phase.run(s, phase.warmup, device, bf16), device)
        for system in systems.values()
    )
    work = count_work(phase.batches, shape)
    # Said before the timed runs, so a slow machine's user knows what to expect. The warm-up
    # holds one-time costs (kernel compilation, first allocations): an upper estimate.
    scale = work.padded_tokens / max(count_work(phase.warmup, shape).padded_tokens, 1)
    log.info(
        "%s: about %.0f s for %d repetitions (from the warm-up)",
        phase.label,
        warmup_seconds * scale * reps,
        reps,
    )
    amounts = {unit: getattr(work, unit) for unit in phase.units}
    unit = phase.units[0]

    def progress(name: str, rep: int, run: Run) -> None:
        rate = amounts[unit] / run.seconds
        log.info("%s %s rep %d/%d: %.0f %s/s", phase.label, name, rep + 1, reps, rate, unit)

    contestants = {
        name: (lambda s=system: phase.run(s, phase.batches, device, bf16))
        for name, system in systems.items()
    }
    runs = alternating_runs(contestants, reps, device, progress)
    out: dict = {"work": asdict(work)}
    for name, system_runs in runs.items():
        # minbert skips work the peer does (padding; most of the last layer for heads that
        # read [CLS] alone): its FLOP/s count the work it does.
        encoder = systems[name].model.encoder if name == "minbert" else None
        done = count_work(
            phase.batches,
            shape,
            first_token_only=bool(encoder and encoder.first_token_shortcut),
            packed=bool(encoder and encoder.pack_tokens),
        )
        flops = getattr(done, phase.flops)
        out[name] = run_summary(system_runs, amounts, flops, peak)
    speed = {name: [amounts[unit] / r.seconds for r in rs] for name, rs in runs.items()}
    out["ratios"] = pair_ratios(speed["minbert"], speed["peer"])
    out["ratio"] = summarise(out["ratios"])
    return out


def run_summary(runs: list[Run], amounts: dict[str, float], flops: float, peak: float) -> dict:
    seconds = [r.seconds for r in runs]
    out: dict = {"seconds": summarise(seconds)}
    for key, amount in amounts.items():
        out[f"{key}_per_s"] = summarise([amount / s for s in seconds])
    out["flops_per_s"] = summarise([flops / s for s in seconds])
    out["peak_fraction"] = summarise([flops / s / peak for s in seconds])
    out["memory"] = worst_memory(runs)
    return out


def worst_memory(runs: list[Run]) -> dict:
    """The largest of each memory figure over the runs."""
    out: dict = {}
    for run in runs:
        for key, value in run.memory.items():
            out[key] = value if isinstance(value, str) else max(value, out.get(key, value))
    return out


def release_memory(device: torch.device) -> None:
    """Collect the models of a finished measurement (its function has returned) so that
    their memory is not counted in the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def headline_ratios(setups: dict[str, dict]) -> dict:
    """The per-pair median ratios under the keys the issue names, plus minbert's best against
    the peer's default (medians of runs taken at different times, so not paired)."""
    out: dict = {}
    for name, result in setups.items():
        out[f"train_ratio_{name}"] = result["train"]["ratio"]["median"]
        out[f"infer_ratio_{name}"] = result["infer"]["ratio"]["median"]
    if {"default", "best"} <= set(setups):
        best, default = setups["best"], setups["default"]
        out["minbert_best_over_peer_default"] = {
            "train_real_tokens": best["train"]["minbert"]["real_tokens_per_s"]["median"]
            / default["train"]["peer"]["real_tokens_per_s"]["median"],
            "infer_sentences": best["infer"]["minbert"]["sentences_per_s"]["median"]
            / default["infer"]["peer"]["sentences_per_s"]["median"],
        }
    return out


# -- environment and report ------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return machine.cpu_model()


def environment(device: torch.device) -> dict:
    transformers = import_transformers()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "fast_bf16": fast_bf16(device),
        # cpu, its extensions, threads, gpu; precision is the setup's (both are timed)
        **{
            k: v
            for k, v in machine.describe(device, False).items()
            if k not in ("precision", "device")
        },
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
