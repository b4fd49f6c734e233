"""``minbert`` command line: parses arguments, builds a config, calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from minbert.config import ConfigError, config_from_dict, load_config
from minbert.data.tasks import TASKS
from minbert.errors import UserError

log = logging.getLogger("minbert")
EXIT_USER_ERROR = 2  # the code argparse uses for a bad command line


class UsageError(UserError):
    """Options that do not go together, or a request the run cannot serve."""


def format_metrics(metrics: dict[str, float]) -> str:
    labels = {
        "overall_mean": "overall (plain mean)",
        "overall_leaderboard": "overall (leaderboard: STS r as (r+1)/2)",
    }
    width = max(len(labels.get(k, k)) for k in metrics)
    return "\n".join(f"  {labels.get(k, k):<{width}}  {v:.4f}" for k, v in metrics.items())


# What ``minbert pretrain`` starts from before its config file: a run of no task, whose best
# epoch is the one with the best zero-shot STS dev score unless the file says otherwise.
PRETRAIN_BASE = {"train": {"tasks": [], "select_by": "sts_zeroshot_spearman"}}


def cmd_pretrain(args: argparse.Namespace) -> int:
    return cmd_train(args, pretrain=True)


def cmd_train(args: argparse.Namespace, pretrain: bool = False) -> int:
    from minbert.run.layout import RunDir
    from minbert.train.session import collecting_logs, logging_to
    from minbert.train.trainer import Trainer, TrainingInterrupted

    command = "pretrain" if pretrain else "train"
    if args.resume:
        if args.config or args.set or (args.out and Path(args.out) != Path(args.resume)):
            raise ConfigError("--resume continues a run as it was configured: drop --config/--set")
        out = Path(args.resume)
        if not RunDir(out).is_run():
            raise FileNotFoundError(f"{out}: not a run folder (no config.toml)")
        config = load_config(RunDir(out).config)
    elif args.out:
        out = Path(args.out)
        config = load_config(args.config, args.set, PRETRAIN_BASE if pretrain else None)
    else:
        raise ConfigError(f"give --out RUN for a new run, or --resume RUN ({command})")
    if pretrain and config.train.tasks:
        raise ConfigError(
            f"train.tasks: minbert pretrain trains no task (got {config.train.tasks}); to add "
            "mlm or simcse to task training, use minbert train with pretrain.<name>.weight"
        )
    if not pretrain and not config.train.tasks:
        raise ConfigError("train.tasks: empty; a run of no task is `minbert pretrain`")
    resume = bool(args.resume)
    world = join_world(config)
    try:
        with collecting_logs() as early:  # train.log is the run's only once it owns RUN
            trainer = Trainer(config, out, resume=resume, overwrite=args.overwrite, world=world)
        if not world.is_main:  # rank 0 alone writes the log, the scores and the files
            trainer.run()
            return 0
        with logging_to(RunDir(out).log, append=resume, earlier=early):
            summary = trainer.run()
    except TrainingInterrupted as exc:
        if world.is_main:
            print(f"\n{exc}", file=sys.stderr)
        return 128 + exc.signum
    finally:
        world.leave()
    print(f"\ndev scores of the best epoch ({summary['best_epoch']}) in {out}:")
    print(format_metrics(summary["dev"]))
    print(f"  training wall time: {summary['train_wall_seconds']:.0f} s on {summary['device']}")
    return 0


def join_world(config):
    """Under torchrun, this process's rank (its log lines say so; ranks other than 0 log
    warnings and errors only); otherwise the world of one."""
    from minbert.device import resolve_device
    from minbert.train.distributed import join

    world = join(resolve_device(config.train.device), config.train.dist_timeout)
    if world.distributed:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(
                logging.Formatter(f"[rank {world.rank}] %(levelname)s %(message)s")
            )
        if not world.is_main:
            log.setLevel(logging.WARNING)
    return world


def cmd_eval(args: argparse.Namespace) -> int:
    from minbert.data.splits import load_split
    from minbert.device import resolve_device, use_bf16
    from minbert.eval.evaluate import evaluate
    from minbert.run.model_dir import load_model_dir

    model, tokenizer, config = load_model_dir(args.run)
    if args.set:
        config = config_from_dict(config.to_dict(), args.set)
    device = resolve_device(config.train.device)
    bf16 = use_bf16(config.train.precision, device)
    model.to(device)
    tasks = args.task or model.tasks
    datasets = {
        t: load_split(config, t, args.split, tokenizer) for t in _check_tasks(tasks, model.tasks)
    }
    metrics, _ = evaluate(
        model, datasets, config.train.eval_batch_size, device, bf16, progress=True
    )
    print(f"{args.split} scores of {args.run}:")
    print(format_metrics(metrics))
    return 0


def _check_tasks(asked: list[str], trained: list[str]) -> list[str]:
    for task in asked:
        if task not in trained:
            raise UsageError(f"this run did not train task {task!r}; it trained {trained}")
    return asked


def cmd_predict(args: argparse.Namespace) -> int:
    from minbert.data.io import read_task_file, write_predictions
    from minbert.data.tasks import TASKS
    from minbert.eval.predictor import PredictorError

    if args.input and (args.text is not None or args.text2 is not None):
        raise UsageError("give either --input FILE or --text (and --text2), not both")
    if not args.input and args.text is None:
        raise UsageError("give --text (and --text2 for pair tasks) or --input FILE")
    predictor = load_backend(args.run, args.backend)
    try:
        predictor.check_task(args.task)
        spec = TASKS[args.task]
        if args.input:
            data = read_task_file(args.input, spec, "input", labelled=False)
            preds, ids = predictor.predict_data(data), data.ids
        else:
            if spec.is_pair != (args.text2 is not None):
                need = "--text and --text2" if spec.is_pair else "only --text"
                raise UsageError(f"task {args.task} needs {need}")
            text = (args.text, args.text2) if spec.is_pair else args.text
            preds, ids = predictor.predict(args.task, [text]), ["text"]
    except PredictorError as exc:
        raise UsageError(str(exc).removeprefix("input 0: ")) from None
    if args.output:
        write_predictions(args.output, ids, preds, spec.label_kind)
        print(f"wrote {len(preds)} predictions to {args.output}")
    elif args.input:
        for row_id, p in zip(ids, preds, strict=True):
            print(f"{row_id},{p:.4f}" if spec.label_kind == "score" else f"{row_id},{int(p)}")
    else:
        value = preds[0]
        print(f"{value:.4f}" if spec.label_kind == "score" else int(value))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from minbert.model.loading import export_pretrained, load_pretrained
    from minbert.run.model_dir import load_model_dir

    if args.format == "onnx":
        from minbert.onnx.export import export_onnx

        tasks = args.tasks.split(",") if args.tasks else None
        out = export_onnx(
            args.source, args.out, quantize=args.quantize, overwrite=args.overwrite, tasks=tasks
        )
        print(f"wrote ONNX graphs to {out} (serve them: minbert serve {out} --backend onnx)")
        return 0
    if args.overwrite:
        raise UsageError("--overwrite applies to --format onnx")
    if args.tasks and not args.merge:
        raise UsageError("--tasks applies to --format onnx and to --merge")
    if args.quantize:
        raise UsageError("--quantize applies to --format onnx")

    mlm_head = None
    try:  # a run folder or model directory, else a pretrained model name or HF directory
        model, tokenizer, config = load_model_dir(args.source)
        if model.adapter is not None:
            from minbert.model.adapters.export import export_adapted

            tasks = args.tasks.split(",") if args.tasks else None
            for line in export_adapted(model, tokenizer, config, args.out, args.merge, tasks):
                print(f"wrote {line}" if not line.startswith("note:") else line)
            return 0
        if args.merge:
            raise UsageError(f"--merge: {args.source} has no adapter (adapter.kind = 'none')")
        encoder = model.encoder
        mlm_head = dict(model.objective_heads.items()).get("mlm")
        own = [t for t, head in model.heads.items() if head.own_layers is not None]
        if own:
            print(
                f"note: {', '.join(own)} read their own top layers (heads.<task>.own_layers), "
                "which a BERT directory cannot hold; this writes the shared encoder"
            )
    except FileNotFoundError:
        if args.merge:
            raise UsageError(
                f"--merge: {args.source} is not a minbert run with an adapter"
            ) from None
        encoder, tokenizer = load_pretrained(args.source)
    out = export_pretrained(encoder, tokenizer, args.out, mlm_head)
    kind = "BertForMaskedLM (encoder and MLM head)" if mlm_head is not None else "BERT"
    print(f"wrote a Hugging Face {kind} directory to {out}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from minbert.data.augment import augment_file

    config = load_config(args.config, [f"train.tasks=['{args.task}']", *args.set])
    rows, copies = augment_file(
        args.file, args.task, config, args.out, epoch=args.epoch, overwrite=args.overwrite
    )
    print(
        f"wrote {args.out}: {rows} rows, then {copies} augmented copies "
        f"({config.augmentation(args.task).summary()}, seed {config.train.seed}, epoch {args.epoch})"
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from minbert.experiments.sweep import collect, read_spec, run_sweep, write_tables

    spec = read_spec(args.spec)
    if args.table_only:
        collect(spec, Path(args.out))  # finished run folders' results, beside the copied ones
        summary = write_tables(spec, Path(args.out))
        summary["failed"] = []
    else:
        summary = run_sweep(spec, args.out, jobs=args.jobs)
    print((Path(args.out) / "sweep.md").read_text(encoding="utf-8"), end="")
    if "stopped" in summary:
        print(f"stopped by {summary['stopped']}: run the same command again to go on")
        return 128 + int(getattr(signal, summary["stopped"]))
    if summary["failed"]:
        print(f"failed: {', '.join(summary['failed'])} (their .out files in {args.out} say why)")
        return 1
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from minbert.experiments.search import read_search_spec, run_search

    spec = read_search_spec(args.spec)
    best = run_search(spec, args.out, args.trials)
    print((Path(args.out) / "trials.md").read_text(encoding="utf-8"), end="")
    print(
        f"best: trial {best['best_trial']}, {spec.metric} = {best['best_value']:.4f}; "
        f"train it: minbert train --config {Path(args.out) / 'best.toml'} --out RUN"
    )
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from minbert.experiments.ensemble import run_ensemble

    summary = run_ensemble(args.runs, args.out, soup=args.soup, overwrite=args.overwrite)
    print(f"ensemble of {len(args.runs)} runs, dev:")
    print(format_metrics(summary["dev"]))
    if "soup" in summary:
        print(f"soup (averaged weights, {summary['soup']['model_dir']}), dev:")
        print(format_metrics(summary["soup"]["dev"]))
    print(f"predictions in {Path(args.out) / 'predictions'}; details in ensemble.json")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from minbert.experiments.claims import write_claims

    print(write_claims(args.specs, args.runs, args.out, args.kept), end="")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from minbert.config import describe

    config = load_config(args.config, args.set)
    print(describe(config) if args.doc else config.to_toml(), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from minbert.eval.report import write_report
    from minbert.run.layout import RunDir

    write_report(args.run)
    print(f"wrote {RunDir(args.run).summary}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from minbert.eval.compare import compare_table

    print(compare_table([Path(r) for r in args.runs], mean_row=args.mean), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from minbert.serve.http import create_app

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = serve_settings(args)
    backend = load_backend(args.run, args.backend, args.threads, settings.pad_multiple)
    app = create_app(backend, settings, name=str(args.run))
    print(f"serving {', '.join(backend.tasks)} of {args.run} on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def serve_settings(args: argparse.Namespace):
    """The service's limits from ``minbert serve``'s options; batching by the backend's
    default unless ``--max-batch`` or ``--no-batching`` says otherwise."""
    from minbert.serve.settings import DEFAULT_MAX_BATCH, ServeSettings

    return ServeSettings(
        max_batch=1 if args.no_batching else args.max_batch or DEFAULT_MAX_BATCH[args.backend],
        max_wait_ms=args.max_wait_ms,
        max_items=args.max_items,
        max_text_bytes=args.max_text_bytes,
        max_body_bytes=args.max_body_bytes,
        pad_multiple=args.pad_multiple,
    )


def load_backend(path: str, backend: str, threads: int = 0, pad_multiple: int = 1):
    """``torch``: a run folder or model directory; ``onnx``: a folder written by
    ``minbert export --format onnx``."""
    if backend == "onnx":
        from minbert.onnx.predictor import OnnxPredictor

        return OnnxPredictor.from_dir(path, threads=threads, pad_multiple=pad_multiple)
    from minbert.eval.predictor import Predictor

    return Predictor.from_run(path, pad_multiple=pad_multiple)


def cmd_bench(args: argparse.Namespace) -> int:
    from minbert.bench.throughput import run
    from minbert.cli_bench import options_from_args

    _, report = run(options_from_args(args))
    print(report, end="")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(kind: type) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` that is 0 or more."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= 0:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
        return value

    return parse


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the form of every other: the last line ``error: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.format_usage()}error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minbert", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument("-h", "--help", action="help", help="show this help and exit")
    run_options.add_argument("--config", help="TOML config file (default: built-in defaults)")
    run_options.add_argument("--out", help="run folder to create")
    run_options.add_argument(
        "--resume", metavar="RUN", help="continue a stopped run from RUN/last/ (exactly)"
    )
    run_options.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (removed once the new run's inputs are read)",
    )
    run_options.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-5 (repeatable)",
    )
    train = sub.add_parser(
        "train", help="train a model as a config says", parents=[run_options], add_help=False
    )
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser(
        "pretrain",
        help="pre-train the encoder (MLM, SimCSE) into a run that model.name can start from",
        parents=[run_options],
        add_help=False,
    )
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="recompute metrics of a trained run")
    ev.add_argument("run", help="run folder (or a model directory)")
    ev.add_argument("--split", default="dev", choices=["train", "dev"])
    ev.add_argument("--task", action="append", help="only this task (repeatable)")
    ev.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of the run, e.g. --set data.dir=other",
    )
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("run", help="run folder (or a model directory)")
    pr.add_argument("--task", required=True)
    pr.add_argument("--text", help="the sentence (first sentence of a pair)")
    pr.add_argument("--text2", help="second sentence of a pair task")
    pr.add_argument("--input", help="TSV file with the task's columns (labels optional)")
    pr.add_argument("--output", help="write id,prediction CSV here")
    pr.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: RUN is a folder written by `minbert export --format onnx`",
    )
    pr.set_defaults(func=cmd_predict)

    au = sub.add_parser(
        "augment", help="write a task file with augmented copies of its rows ([augment.<task>])"
    )
    au.add_argument("file", help="labelled task file (tab-separated, the task's columns)")
    au.add_argument("--task", required=True, choices=sorted(TASKS))
    au.add_argument("--out", required=True, help="file to write: the rows, then their copies")
    au.add_argument("--config", help="TOML config whose [augment.<task>] table to use")
    au.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key"
    )
    au.add_argument(
        "--epoch", type=positive_int, default=1, help="the copies of this epoch (default 1)"
    )
    au.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    au.set_defaults(func=cmd_augment)

    sw = sub.add_parser(
        "sweep", help="every arm of a spec on every seed, then means, intervals, paired changes"
    )
    sw.add_argument("spec", help="sweep spec (TOML: [sweep] seeds, baseline; [arms.<name>])")
    sw.add_argument("--out", required=True, help="folder of the sweep's runs and tables")
    sw.add_argument("--jobs", type=positive_int, default=1, help="runs at a time (cores split)")
    sw.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: remake the tables from DIR/results (and finished run folders)",
    )
    sw.set_defaults(func=cmd_sweep)

    se_ = sub.add_parser("search", help="hyper-parameter search with Optuna (TPE, median pruner)")
    se_.add_argument("spec", help="search spec (TOML: [search] config, set, metric; [space])")
    se_.add_argument("--trials", type=positive_int, required=True, help="finished trials wanted")
    se_.add_argument("--out", required=True, help="folder of the study (study.db) and trials")
    se_.set_defaults(func=cmd_search)

    en = sub.add_parser("ensemble", help="combine trained runs' predictions (and --soup weights)")
    en.add_argument("runs", nargs="+", help="two or more run folders (or model directories)")
    en.add_argument("--out", required=True, help="folder for predictions and ensemble.json")
    en.add_argument("--soup", action="store_true", help="also average the runs' weights")
    en.add_argument("--overwrite", action="store_true", help="replace an earlier ensemble")
    en.set_defaults(func=cmd_ensemble)

    cl = sub.add_parser("claims", help="docs/CLAIMS.md from the claim sweeps' results")
    cl.add_argument("--specs", default="configs/claims", help="folder of claim specs")
    cl.add_argument("--runs", default="runs/claims", help="folder of their sweeps")
    cl.add_argument("--out", default="docs/CLAIMS.md")
    cl.add_argument(
        "--kept",
        default="docs/claims",
        help="copies of the results used (read where --runs has none)",
    )
    cl.set_defaults(func=cmd_claims)

    ex = sub.add_parser("export", help="write a Hugging Face BERT directory, or ONNX graphs")
    ex.add_argument("source", help="run folder, model directory, or pretrained model name")
    ex.add_argument("out", help="folder to write")
    ex.add_argument(
        "--format",
        choices=["hf", "onnx"],
        default="hf",
        help="hf: the encoder as a Hugging Face BERT directory; onnx: the encoder and the "
        "run's heads, one graph per task, for ONNX Runtime",
    )
    ex.add_argument("--quantize", choices=["int8"], help="onnx: int8 dynamic quantisation")
    ex.add_argument("--tasks", help="onnx, --merge: comma-separated tasks to export (default: all)")
    ex.add_argument(
        "--merge",
        action="store_true",
        help="hf, a LoRA run: the LoRA merged into the weights, a plain BERT directory (one "
        "per task for per-task LoRA); without it, the base encoder and peft adapters",
    )
    ex.add_argument("--overwrite", action="store_true", help="onnx: replace an earlier export")
    ex.set_defaults(func=cmd_export)

    co = sub.add_parser("config", help="print the resolved config (defaults, file, overrides)")
    co.add_argument("--config", help="TOML config file")
    co.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    co.add_argument("--doc", action="store_true", help="list every key with its meaning")
    co.set_defaults(func=cmd_config)

    rp = sub.add_parser("report", help="(re)write RUN/report/: summary, curves, error analysis")
    rp.add_argument("run", help="run folder")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser("compare", help="markdown table of the dev scores of finished runs")
    cp.add_argument("runs", nargs="+", help="run folders")
    cp.add_argument(
        "--mean", action="store_true", help="add a row of mean ± std over the runs (seeds)"
    )
    cp.set_defaults(func=cmd_compare)

    from minbert.serve.settings import ServeSettings

    limits = ServeSettings()
    se = sub.add_parser("serve", help="HTTP API over a trained run (docs at /docs)")
    se.add_argument("run", help="run folder or model directory (onnx: an ONNX export folder)")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    se.add_argument(
        "--threads", type=non_negative(int), default=0, help="CPU threads (0: the default)"
    )
    se.add_argument(
        "--max-batch",
        type=positive_int,
        help=f"items per forward pass (default {limits.max_batch} for torch, 1 for onnx: "
        "merging does not pay there, see docs/PERFORMANCE.md)",
    )
    options = {
        "--max-wait-ms": (
            non_negative(float),
            limits.max_wait_ms,
            "how long a batch waits for more requests",
        ),
        "--max-items": (positive_int, limits.max_items, "texts or pairs per request"),
        "--max-text-bytes": (positive_int, limits.max_text_bytes, "UTF-8 bytes per text"),
        "--max-body-bytes": (positive_int, limits.max_body_bytes, "request body limit"),
        "--pad-multiple": (
            positive_int,
            limits.pad_multiple,
            "pad batches to a multiple of this many tokens (few shapes: memory stays flat)",
        ),
    }
    for flag, (kind, default, text) in options.items():
        se.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    se.add_argument("--no-batching", action="store_true", help="one request per forward pass")
    se.set_defaults(func=cmd_serve)

    from minbert.cli_bench import add_arguments as add_bench_arguments

    be = sub.add_parser(
        "bench", help="throughput of minbert against transformers (docs/PERFORMANCE.md)"
    )
    add_bench_arguments(be)
    be.set_defaults(func=cmd_bench)
    return parser


def _rank_prefix() -> str:
    """``[rank N] `` on ranks other than 0 of a torchrun launch, whose errors repeat rank 0's."""
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "0"
    return f"[rank {rank}] " if rank != "0" else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(message)s",
    )
    from minbert.device import tune_memory

    if not getattr(args, "plain_allocator", False):
        tune_memory()
    try:
        return args.func(args)
    except (UserError, OSError) as exc:  # OSError: a path missing, unreadable, a full disk
        if args.verbose:
            traceback.print_exc()
        print(f"{_rank_prefix()}error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
