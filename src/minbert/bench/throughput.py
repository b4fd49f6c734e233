"""``minbert bench``: training and inference throughput of minbert against transformers.

In ONE process, on the same pretrained weights, batches, dtype and task data, the two systems
(``systems.py``) take turns run by run, in two setups configured alike for both:

- *default*, what a transformers user gets: ``BertModel``'s default attention, fp32, batches
  drawn at random and padded to their longest row, dev sets scored in file order;
- *best*: sdpa attention, bf16 autocast, length-grouped training batches (sorted within
  shuffled chunks), dev sets scored sorted by length.

Per setup: training (full optimiser steps on a round-robin of SST, Quora and STS batches) in
real and padded tokens/s and as a fraction of the measured matmul peak; inference (the three
dev sets under ``torch.inference_mode``) in sentences/s; peak memory; a fixed batch of 32 x
128 tokens for the FLOP-fraction target. Every figure has the median and spread of
``reps`` runs, and each repetition pairs one minbert run with one peer run, so the ratio
minbert / peer is taken pair by pair. ``ablate`` measures minbert with each optimisation of
the best setup switched off in turn; ``sweep`` plots tokens/s against sequence length and
batch size for both systems.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from minbert.bench.measure import (
    FLOP_FORMULA,
    ModelShape,
    Run,
    alternating_runs,
    matmul_peak,
    pair_ratios,
    process_peak_rss_mib,
    summarise,
)
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
from minbert.device import fast_bf16, resolve_device
from minbert.model.bert import BertSelfAttention
from minbert.model.dropout import Dropout
from minbert.model.loading import load_pretrained

log = logging.getLogger(__name__)

SAME_OUTPUT_TOLERANCE = 1e-3  # fp32 outputs of the two systems on the same batch
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


def apply_variant(system: System, variant: Variant) -> None:
    """Switch minbert's optimisations on or off in place, as ``variant`` says."""
    system.optimizer.compiled = variant.compiled_optimizer
    model = system.model
    encoder = model.encoder
    model.set_attention(variant.attention)
    encoder.first_token_shortcut = variant.first_token_only
    encoder.pack_tokens = variant.packed
    for module in model.modules():
        if isinstance(module, Dropout):
            module.fast_mask = variant.fast_dropout
        if isinstance(module, BertSelfAttention):
            module.stack_projections = variant.stacked_projections


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


# -- the comparison --------------------------------------------------------------------------------


def run(options: BenchOptions) -> tuple[dict, str]:
    """Measure what ``options`` asks; write the JSON and the plot; return results and a report."""
    device = resolve_device(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    results: dict = {"environment": environment(device), "options": asdict(options)}
    if options.compare or options.ablate:
        results.update(compare_systems(options, device))
    if options.sweep_png:
        rows = run_sweep(options, device)
        release_memory(device)
        plot_sweep(rows, Path(options.sweep_png), sweep_title(options, device))
        results["sweep"] = {"setup": options.sweep_setup, "plot": options.sweep_png, "rows": rows}
    results["process_peak_rss_mib"] = process_peak_rss_mib()
    if options.json_path:
        path = Path(options.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results, markdown_report(results)


def compare_systems(options: BenchOptions, device: torch.device) -> dict:
    encoder, tokenizer = load_pretrained(options.model)
    shape = ModelShape.of(encoder)
    del encoder
    data = load_bench_data(
        options.data_dir, tokenizer, options.max_length, options.train_limit, options.dev_limit
    )
    used = [SETUPS[s] for s in options.setups] if options.compare else []
    size = matmul_size(options, device)
    peaks = {}
    for dtype in sorted({s.dtype for s in used}):
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
            out["setups"][name] = bench_setup(SETUPS[name], options, data, shape, peaks, device)
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
    for system in systems.values():
        phase.run(system, phase.warmup, device, bf16)
    work = count_work(phase.batches, shape)
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


# -- ablation: each optimisation of the best setup switched off in turn ----------------------------


def run_ablation(
    options: BenchOptions, data: BenchData, shape: ModelShape, device: torch.device
) -> dict:
    """minbert alone: real training tokens/s and scoring sentences/s of each variant, and the
    speed-up the optimisation brings (best ÷ variant), repetition by repetition. Grouped and
    random batches hold different rows, so variants are compared by rate, not by seconds."""
    minbert = build_minbert(options.model, "sdpa", options.seed)
    minbert.model.to(device)
    train = {
        grouped: training_batches(
            data.train,
            options.train_steps,
            options.batch_size,
            grouped,
            options.seed,
            minbert.model,
        )
        for grouped in (True, False)
    }
    dev = {g: scoring_batches(data.dev, options.eval_batch_size, g) for g in (True, False)}
    out: dict = {}
    for phase, runner, batches, unit, warmup in (
        ("train", train_run, train, "real_tokens", options.warmup_steps),
        ("infer", score_run, dev, "sentences", 2),
    ):

        def variant(name: str, limit: int | None = None, runner=runner, batches=batches) -> None:
            chosen = ABLATIONS[name]
            apply_variant(minbert, chosen)
            runner(minbert, batches[chosen.grouped][:limit], device, chosen.bf16)

        for name in ABLATIONS:
            variant(name, warmup)
        runs = alternating_runs(
            {name: (lambda n=name: variant(n)) for name in ABLATIONS}, options.reps, device
        )
        amount = {g: getattr(count_work(batches[g], shape), unit) for g in (True, False)}
        speed = {
            name: [amount[ABLATIONS[name].grouped] / r.seconds for r in rs]
            for name, rs in runs.items()
        }
        out[phase] = {
            name: {
                f"{unit}_per_s": summarise(values),
                "best_over_variant": summarise(pair_ratios(speed["best"], values)),
            }
            for name, values in speed.items()
        }
    return out


# -- sweep: tokens/s against sequence length and batch size ----------------------------------------


def run_sweep(options: BenchOptions, device: torch.device) -> list[dict]:
    """Tokens/s of both systems on full (unpadded) synthetic batches of every length x batch
    size, training steps and inference, in the ``sweep_setup`` configuration."""
    setup = SETUPS[options.sweep_setup]
    minbert, peer = build_systems(setup, options, device)
    systems = {"minbert": minbert, "peer": peer}
    longest = minbert.model.encoder.config.max_position_embeddings
    vocab = minbert.model.encoder.config.vocab_size
    rows = []
    for length in options.sweep_lengths:
        if length > longest:
            log.warning("sweep: length %d skipped, the model takes at most %d", length, longest)
            continue
        for batch_size in options.sweep_batch_sizes:
            batch = synthetic_batch(batch_size, length, vocab)
            for phase, runner in (("train", train_run), ("infer", score_run)):
                rows += sweep_point(systems, runner, batch, phase, options, setup.bf16, device)
    return rows


def sweep_point(
    systems: dict[str, System],
    runner: Callable,
    batch: TaskBatch,
    phase: str,
    options: BenchOptions,
    bf16: bool,
    device: torch.device,
) -> list[dict]:
    batch_size, length = batch[1].segments[0].input_ids.shape
    steps = [batch] * options.sweep_steps
    try:
        for system in systems.values():
            runner(system, [batch], device, bf16)  # warm-up
        runs = alternating_runs(
            {name: (lambda s=s: runner(s, steps, device, bf16)) for name, s in systems.items()},
            options.sweep_reps,
            device,
        )
    except torch.OutOfMemoryError:
        log.warning("sweep: %s batch %d x %d does not fit in memory", phase, batch_size, length)
        return []
    tokens = batch_size * length * options.sweep_steps
    rows = []
    for name, system_runs in runs.items():
        speed = statistics.median(tokens / r.seconds for r in system_runs)
        rows.append(
            {
                "phase": phase,
                "system": name,
                "length": length,
                "batch_size": batch_size,
                "tokens_per_s": speed,
            }
        )
        log.info("sweep %s %s %d x %d: %.0f tokens/s", phase, name, batch_size, length, speed)
    return rows


def sweep_title(options: BenchOptions, device: torch.device) -> str:
    setup = SETUPS[options.sweep_setup]
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    attention = setup.peer_attention or "default"
    return (
        f"minbert vs {PEER}: {options.model} on {device_name(device)}{threads}; "
        f"{setup.name} setup: {setup.dtype}, {attention} attention"
    )


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    """Tokens/s against length (a line per batch size) and against batch size (a line per
    length), training on top and inference below; minbert solid, transformers dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    styles = {"minbert": "-", "peer": "--"}
    for row_axes, phase in zip(axes, ("train", "infer"), strict=True):
        points = [r for r in rows if r["phase"] == phase]
        for ax, x_key, line_key in (
            (row_axes[0], "length", "batch_size"),
            (row_axes[1], "batch_size", "length"),
        ):
            for i, line in enumerate(sorted({r[line_key] for r in points})):
                for system, style in styles.items():
                    mine = sorted(
                        (r for r in points if r[line_key] == line and r["system"] == system),
                        key=lambda r: r[x_key],
                    )
                    if mine:
                        ax.plot(
                            [r[x_key] for r in mine],
                            [r["tokens_per_s"] for r in mine],
                            style,
                            marker="o",
                            color=colours[i % len(colours)],
                            label=f"{'minbert' if system == 'minbert' else PEER}, "
                            f"{'batch' if line_key == 'batch_size' else 'length'} {line}",
                        )
            ax.set_xscale("log", base=2)
            ticks = sorted({r[x_key] for r in points})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("sequence length (tokens)" if x_key == "length" else "batch size")
            ax.set_ylabel("tokens / s")
            ax.set_title(f"{'training step' if phase == 'train' else 'inference'} tokens/s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)


# -- environment and report ------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device) -> dict:
    transformers = import_transformers()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "fast_bf16": fast_bf16(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _rate(stats: dict) -> str:
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}–{stats['max']:,.0f})"


def _ratio(stats: dict) -> str:
    return f"{stats['median']:.2f}× ({stats['min']:.2f}–{stats['max']:.2f})"


def _percent(stats: dict) -> str:
    return f"{100 * stats['median']:.1f}%"


def _mib(memory: dict, key: str) -> str:
    return f"{memory[key]:,.0f}" if key in memory else "–"


def setup_rows(name: str, result: dict) -> list[list[str]]:
    train, infer = result["train"], result["infer"]
    rows = [
        ["training, real tokens/s", "real_tokens_per_s", train, _rate, True],
        ["training, padded tokens/s", "padded_tokens_per_s", train, _rate, False],
        [
            f"training FLOP/s, % of {result['dtype']} matmul peak",
            "peak_fraction",
            train,
            _percent,
            False,
        ],
        ["inference, sentences/s", "sentences_per_s", infer, _rate, True],
        ["inference, real tokens/s", "real_tokens_per_s", infer, _rate, False],
    ]
    if "fixed" in result:
        b, t = result["fixed"]["batch"]
        rows += [
            [f"training {b}×{t}, tokens/s", "real_tokens_per_s", result["fixed"], _rate, True],
            [
                f"training {b}×{t}, % of {result['dtype']} matmul peak",
                "peak_fraction",
                result["fixed"],
                _percent,
                False,
            ],
        ]
    out = []
    for label, key, phase, fmt, with_ratio in rows:
        ratio = _ratio(phase["ratio"]) if with_ratio else ""
        out.append([name, label, fmt(phase["minbert"][key]), fmt(phase["peer"][key]), ratio])
    for label, key in (
        ("training, peak RSS growth (MiB)", "rss_growth_mib"),
        ("training, peak RSS (MiB)", "peak_rss_mib"),
        ("training, CUDA max allocated (MiB)", "cuda_max_allocated_mib"),
    ):
        memory = {s: train[s]["memory"] for s in ("minbert", "peer")}
        if key in memory["minbert"]:
            out.append([name, label, _mib(memory["minbert"], key), _mib(memory["peer"], key), ""])
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown_report(results: dict) -> str:
    env, options = results["environment"], results["options"]
    parts = [
        f"## minbert vs {PEER} {env['transformers']} — {options['model']} on "
        f"{env['device_name']} ({env['device']}, torch threads: {env['threads']}), torch "
        f"{env['torch']}, {env['date_utc']}",
        "",
        f"Batch {options['batch_size']} (scoring {options['eval_batch_size']}), max length "
        f"{options['max_length']}, {options['reps']} alternating repetitions; cells are median "
        "(min–max); ratios are minbert ÷ transformers per pair of runs (higher: minbert faster)."
        + (" `--quick`: few batches, indicative only." if options["quick"] else ""),
    ]
    setups = results.get("setups", {})
    if setups:
        rows = [row for name, result in setups.items() for row in setup_rows(name, result)]
        parts += [
            "",
            markdown_table(["setup", "measure", "minbert", PEER, "minbert ÷ " + PEER], rows),
            "",
        ]
        for name, result in setups.items():
            work = result["train"]["work"]
            parts.append(
                f"- {name}: attention minbert `{result['attention']['minbert']}` / "
                f"{PEER} `{result['attention']['peer']}`, {result['dtype']}, "
                f"{result['batches']} batches; training {work['batches']} steps, "
                f"{work['real_tokens']:,} real of {work['padded_tokens']:,} padded tokens "
                f"({100 * (1 - work['real_tokens'] / work['padded_tokens']):.0f}% padding); "
                f"scoring {result['infer']['work']['sentences']:,} sentences; outputs agree to "
                f"{result['max_output_difference_fp32']:.1e} (fp32)."
            )
        headline = {k: v for k, v in results.items() if k.endswith(("_default", "_best"))}
        parts.append(
            "- headline (per-pair medians): "
            + ", ".join(f"`{k}` = {v:.2f}" for k, v in headline.items() if isinstance(v, float))
        )
        if "minbert_best_over_peer_default" in results:
            cross = results["minbert_best_over_peer_default"]
            parts.append(
                f"- minbert *best* ÷ {PEER} *default* (medians, not paired): training "
                f"{cross['train_real_tokens']:.2f}×, inference {cross['infer_sentences']:.2f}×"
            )
    if "matmul_peak_flops" in results:
        peaks = ", ".join(
            f"{dtype} {value / 1e12:.3g} TFLOP/s"
            for dtype, value in results["matmul_peak_flops"].items()
        )
        size = results["matmul_size"]
        parts += [f"- measured matmul peak ({size}×{size} @ {size}×{size}, best of 5): {peaks}"]
        parts += [f"- FLOPs: {results['flop_formula']}"]
    if "ablation" in results:
        parts += ["", ablation_table(results["ablation"])]
    if "sweep" in results:
        parts += [
            "",
            sweep_table(results["sweep"]["rows"]),
            "",
            f"plot: {results['sweep']['plot']}",
        ]
    parts.append(
        f"\npeak RSS of the whole benchmark process: {results['process_peak_rss_mib']:,.0f} MiB"
    )
    return "\n".join(parts) + "\n"


def ablation_table(ablation: dict) -> str:
    rows = []
    for name in ABLATIONS:
        train, infer = ablation["train"][name], ablation["infer"][name]
        rows.append(
            [
                name,
                _rate(train["real_tokens_per_s"]),
                _ratio(train["best_over_variant"]),
                _rate(infer["sentences_per_s"]),
                _ratio(infer["best_over_variant"]),
            ]
        )
    header = [
        "minbert variant",
        "training real tokens/s",
        "best ÷ variant",
        "inference sentences/s",
        "best ÷ variant",
    ]
    return "### Each optimisation of the best setup switched off (minbert)\n\n" + markdown_table(
        header, rows
    )


def sweep_table(rows: list[dict]) -> str:
    table = []
    keys = sorted(
        {(r["phase"], r["length"], r["batch_size"]) for r in rows},
        key=lambda k: (k[0] != "train", k[1], k[2]),
    )
    for phase, length, batch_size in keys:
        speed = {
            r["system"]: r["tokens_per_s"]
            for r in rows
            if (r["phase"], r["length"], r["batch_size"]) == (phase, length, batch_size)
        }
        if len(speed) == 2:
            table.append(
                [
                    phase,
                    str(length),
                    str(batch_size),
                    f"{speed['minbert']:,.0f}",
                    f"{speed['peer']:,.0f}",
                    f"{speed['minbert'] / speed['peer']:.2f}×",
                ]
            )
    header = ["phase", "length", "batch", "minbert tokens/s", f"{PEER} tokens/s", "ratio"]
    return "### Sweep: tokens/s by sequence length and batch size\n\n" + markdown_table(
        header, table
    )
