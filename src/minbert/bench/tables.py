"""The markdown report of ``minbert bench``: the comparison table per setup, the notes under
it, the ablation and sweep tables, from the results ``throughput.run`` collects."""

from __future__ import annotations

from minbert import machine
from minbert.bench.options import PEER


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


def _cpu_text(env: dict) -> str:
    # benchmark JSON written before the machine record had no cpu_extensions
    if "cpu_extensions" not in env:
        return ""
    cpu = "" if env["device"] == "cpu" else f"host {env['cpu']} "
    return f"{cpu}{machine.extensions_text(env)}, "


def markdown_report(results: dict) -> str:
    env, options = results["environment"], results["options"]
    parts = [
        f"## minbert vs {PEER} {env['transformers']} — {options['model']} on "
        f"{env['device_name']} ({env['device']}, {_cpu_text(env)}torch threads: {env['threads']}), "
        f"torch "
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
    for name in ablation["train"]:  # the variants this machine ran (options.machine_ablations)
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
