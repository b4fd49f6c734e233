"""Ablation: minbert alone, with each optimisation of the best setup switched off in turn
(``ABLATIONS`` in ``options``, as ``machine_ablations`` adapts them), measured repetition by
repetition against the best setup."""

from __future__ import annotations

import torch

from minbert.bench.measure import ModelShape, alternating_runs, pair_ratios, summarise
from minbert.bench.options import BenchOptions, Variant, machine_ablations
from minbert.bench.systems import (
    BenchData,
    System,
    build_minbert,
    count_work,
    score_run,
    scoring_batches,
    train_run,
    training_batches,
)
from minbert.device import fast_bf16
from minbert.model.bert import BertSelfAttention
from minbert.model.dropout import Dropout


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


def run_ablation(
    options: BenchOptions, data: BenchData, shape: ModelShape, device: torch.device
) -> dict:
    """minbert alone: real training tokens/s and scoring sentences/s of each variant, and the
    speed-up the optimisation brings (best ÷ variant), repetition by repetition. Grouped and
    random batches hold different rows, so variants are compared by rate, not by seconds."""
    ablations = machine_ablations(fast_bf16(device))
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
            chosen = ablations[name]
            apply_variant(minbert, chosen)
            runner(minbert, batches[chosen.grouped][:limit], device, chosen.bf16)

        for name in ablations:
            variant(name, warmup)
        runs = alternating_runs(
            {name: (lambda n=name: variant(n)) for name in ablations}, options.reps, device
        )
        amount = {g: getattr(count_work(batches[g], shape), unit) for g in (True, False)}
        speed = {
            name: [amount[ablations[name].grouped] / r.seconds for r in rs]
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
