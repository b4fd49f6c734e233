"""The sweep: tokens/s of both systems against sequence length and batch size, on full
synthetic batches, and its plot."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from minbert.bench.compare import build_systems, device_name
from minbert.bench.measure import alternating_runs
from minbert.bench.options import PEER, BenchOptions, machine_setup
from minbert.bench.systems import System, TaskBatch, score_run, synthetic_batch, train_run
from minbert.device import fast_bf16

log = logging.getLogger(__name__)


def run_sweep(options: BenchOptions, device: torch.device) -> list[dict]:
    """Tokens/s of both systems on full (unpadded) synthetic batches of every length x batch
    size, training steps and inference, in the ``sweep_setup`` configuration."""
    setup = machine_setup(options.sweep_setup, fast_bf16(device))
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
    setup = machine_setup(options.sweep_setup, fast_bf16(device))
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
