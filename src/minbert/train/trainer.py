"""The training loop. It knows tasks only through the registry, the heads and the schedule."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.config import Config
from minbert.data.batching import EncodedTask, TaskStream, encode_task
from minbert.data.io import read_task_file, write_predictions
from minbert.data.schedules import plan_epoch, planned_examples
from minbert.data.tasks import TASKS
from minbert.eval.evaluate import evaluate
from minbert.eval.report import write_report
from minbert.model.loading import load_pretrained
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.train.checkpoint import load_model_dir, save_model_dir
from minbert.train.device import autocast, resolve_device, use_bf16
from minbert.train.losses import task_loss
from minbert.train.optim import AdamW, parameter_groups, warmup_schedule
from minbert.train.strategies import build_strategy

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable output folder, ...)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split(config: Config, task: str, split: str, tokenizer: Tokenizer) -> EncodedTask:
    """Read and tokenise one split of one task, as the config says (limits, bi-encoding)."""
    spec = TASKS[task]
    limit = {"train": config.data.train_limit, "dev": config.data.dev_limit}.get(split, 0)
    data = read_task_file(
        Path(config.data.dir) / spec.files[split],
        spec,
        split,
        on_bad_row=config.data.on_bad_row,
        limit=limit,
    )
    return encode_task(data, tokenizer, config.data.max_length, bi_encode=config.bi_encoded(task))


@dataclass
class RunState:
    step: int = 0
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0


class Trainer:
    def __init__(self, config: Config, out_dir: str | Path):
        self.config = config
        self.out = Path(out_dir)
        self._prepare_out_dir()
        seed_everything(config.train.seed)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.device = resolve_device(config.train.device)
        self.bf16 = use_bf16(config.train.precision, self.device)
        encoder, self.tokenizer = load_pretrained(config.model.name, config.model.attention)
        self.tasks = list(config.train.tasks)
        self.train_data = {t: load_split(config, t, "train", self.tokenizer) for t in self.tasks}
        self.dev_data = {t: load_split(config, t, "dev", self.tokenizer) for t in self.tasks}
        self.model = MultiTaskModel(encoder, config).to(self.device)
        if config.model.mode == "frozen":
            self.model.encoder.requires_grad_(False)
        self.streams = {
            t: TaskStream(d, config.train.seed, config.train.length_grouping, self.tokenizer.pad_id)
            for t, d in self.train_data.items()
        }
        self.sizes = {t: len(d) for t, d in self.train_data.items()}
        self.plans = [self._plan(e) for e in range(1, config.train.epochs + 1)]
        total_steps = sum(len(p) for p in self.plans)
        if config.train.max_steps:
            total_steps = min(total_steps, config.train.max_steps)
        self.total_steps = total_steps
        self.optimizer = AdamW(
            parameter_groups(
                self.model,
                config.train.weight_decay,
                lambda name: (
                    config.train.head_lr
                    if config.train.head_lr and name.startswith("heads.")
                    else None
                ),
            ),
            lr=config.train.lr,
            betas=tuple(config.train.betas),
            eps=config.train.eps,
            weight_decay=config.train.weight_decay,
        )
        self.scheduler = warmup_schedule(
            self.optimizer,
            config.train.lr_schedule,
            total_steps,
            round(config.train.warmup_ratio * total_steps),
        )
        self.strategy = build_strategy(config.train.strategy, config.train.task_weights)
        self.state = RunState()

    # -- set-up --------------------------------------------------------------------------------

    def _prepare_out_dir(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise TrainingError(f"cannot write to the output folder {self.out}: {exc}") from exc
        (self.out / "config.toml").write_text(self.config.to_toml(), encoding="utf-8")
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():
            metrics.unlink()  # a fresh run owns its folder's results
        handler = logging.FileHandler(self.out / "train.log", mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("minbert").addHandler(handler)
        self._log_handler = handler

    def _plan(self, epoch: int) -> list[dict[str, int]]:
        t = self.config.train
        return plan_epoch(
            t.schedule, self.sizes, t.batch_size, t.sampling, epoch, t.epochs, t.steps_per_epoch
        )

    # -- the loop -------------------------------------------------------------------------------

    def train_step(self, step_plan: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
        self.model.train()
        if self.config.model.mode == "frozen":
            self.model.encoder.eval()  # no dropout in a frozen encoder
        losses = {}
        sizes = {}
        for task, size in step_plan.items():
            batch = self.streams[task].take(size).to(self.device)
            with autocast(self.device, self.bf16):
                outputs = self.model(task, batch)
            targets = self.model.training_targets(task, batch.labels)
            loss = task_loss(TASKS[task], outputs, targets)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at step {self.state.step + 1}, task {task}"
                )
            losses[task] = loss
            sizes[task] = len(batch)
        self.strategy.backward(losses, self.model.shared_parameters())
        if self.config.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad],
                self.config.train.max_grad_norm,
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return {t: loss.item() for t, loss in losses.items()}, sizes

    def run(self) -> dict:
        cfg = self.config.train
        start = time.perf_counter()
        log.info(
            "training %s on %s (%s, bf16=%s): %d steps over %d epoch(s), schedule %s",
            "+".join(self.tasks),
            self.device,
            self.config.model.name,
            self.bf16,
            self.total_steps,
            cfg.epochs,
            cfg.schedule,
        )
        for epoch, plan in enumerate(self.plans, start=1):
            if self.state.step >= self.total_steps:
                break
            plan = plan[: self.total_steps - self.state.step]
            self.state.epoch = epoch
            epoch_start = time.perf_counter()
            loss_sum = dict.fromkeys(self.tasks, 0.0)
            loss_count = dict.fromkeys(self.tasks, 0)
            seen = dict.fromkeys(self.tasks, 0)
            bar = tqdm(
                plan,
                desc=f"epoch {epoch}/{cfg.epochs}",
                disable=not cfg.progress,
                dynamic_ncols=True,
                # in a log file rather than a terminal, a line every 30 s is enough
                mininterval=0.1 if sys.stderr.isatty() else 30.0,
            )
            for step_plan in bar:
                losses, sizes = self.train_step(step_plan)
                for t, value in losses.items():
                    loss_sum[t] += value
                    loss_count[t] += 1
                    seen[t] += sizes[t]
                bar.set_postfix(
                    {t: f"{loss_sum[t] / max(1, loss_count[t]):.3f}" for t in losses}, refresh=False
                )
            train_seconds = time.perf_counter() - epoch_start
            dev, _ = evaluate(
                self.model, self.dev_data, cfg.eval_batch_size, self.device, self.bf16, cfg.progress
            )
            record = {
                "epoch": epoch,
                "step": self.state.step,
                "train_loss": {t: loss_sum[t] / loss_count[t] for t in self.tasks if loss_count[t]},
                "examples": seen,
                "planned_examples": planned_examples(plan),
                "dev": dev,
                "lr": self.scheduler.get_last_lr()[0],
                "train_seconds": round(train_seconds, 2),
                "epoch_seconds": round(time.perf_counter() - epoch_start, 2),
                "elapsed_seconds": round(time.perf_counter() - start, 2),
            }
            with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            log.info(
                "epoch %d: examples seen %s; train loss %s; dev %s (%.0fs)",
                epoch,
                seen,
                _fmt(record["train_loss"]),
                _fmt(dev),
                record["epoch_seconds"],
            )
            key = "overall_leaderboard"
            if dev[key] > self.state.best_score:
                self.state.best_score, self.state.best_epoch = dev[key], epoch
                save_model_dir(
                    self.model,
                    self.tokenizer,
                    self.config,
                    self.out / "best",
                    {"epoch": epoch, "step": self.state.step, "dev": dev},
                )
        return self.finish(time.perf_counter() - start)

    def finish(self, train_wall: float) -> dict:
        """Reload the best model, score dev, write dev and test predictions."""
        model, _, _ = load_model_dir(self.out / "best")
        model.to(self.device)
        cfg = self.config.train
        dev, dev_predictions = evaluate(
            model, self.dev_data, cfg.eval_batch_size, self.device, self.bf16
        )
        test_data = {t: load_split(self.config, t, "test", self.tokenizer) for t in self.tasks}
        _, test_predictions = evaluate(
            model, test_data, cfg.eval_batch_size, self.device, self.bf16
        )
        for split, data, predictions in (
            ("dev", self.dev_data, dev_predictions),
            ("test", test_data, test_predictions),
        ):
            for task, d in data.items():
                folder = self.out / "predictions"
                write_predictions(
                    folder / f"{task}-{split}.csv",
                    d.ids,
                    predictions[task].values,
                    TASKS[task].label_kind,
                )
                if split == "dev":  # raw outputs, for the report's confidence-ranked errors
                    np.save(folder / f"{task}-dev-outputs.npy", predictions[task].outputs)
        summary = {
            "best_epoch": self.state.best_epoch,
            "dev": dev,
            "train_wall_seconds": round(train_wall, 1),
            "device": str(self.device),
            "bf16": self.bf16,
        }
        (self.out / "final.json").write_text(json.dumps(summary, indent=2) + "\n")
        report = write_report(self.out)
        log.info("report: %s", report / "summary.md")
        logging.getLogger("minbert").removeHandler(self._log_handler)
        self._log_handler.close()
        return summary


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items())
