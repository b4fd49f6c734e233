"""The training loop. It knows tasks only through the registry, the heads and the schedule."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.config import Config
from minbert.data.batching import EncodedTask, TaskStream, encode_task, hold_out
from minbert.data.io import read_task_file, write_predictions
from minbert.data.schedules import plan_epoch, planned_examples
from minbert.data.tasks import TASKS
from minbert.device import MIB, autocast, process_peak_rss_mib, resolve_device, use_bf16
from minbert.eval.evaluate import evaluate, predict
from minbert.eval.metrics import accuracy, best_threshold
from minbert.eval.report import write_report
from minbert.model.loading import load_pretrained
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.train.checkpoint import load_model_dir, save_model_dir
from minbert.train.conflicts import (
    conflict_stats,
    epoch_fields,
    log_conflicts,
    log_weights,
    probe_batch,
)
from minbert.train.ema import WeightAverage
from minbert.train.gradients import flat_gradient
from minbert.train.losses import cosent, in_batch_contrastive, task_loss
from minbert.train.optim import AdamW, parameter_groups, warmup_schedule
from minbert.train.smart import Smart, divergence
from minbert.train.state import (
    load_state,
    recover,
    rng_state,
    save_state,
    set_rng_state,
    write_atomic,
)
from minbert.train.strategies import build_strategy

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MIN_FREE_BYTES = 512 * 2**20  # RUN/last/ of MiniLM is 266 MiB (du -sh)


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
    """Where a run stands; saved in ``RUN/last/`` with everything else a resume needs."""

    step: int = 0  # optimiser steps done (skipped ones included)
    epoch: int = 1  # the epoch in progress
    step_in_epoch: int = 0  # steps of this epoch's plan done
    best_score: float = -math.inf
    best_epoch: int = 0
    skipped: int = 0  # steps skipped for non-finite values, whole run
    # Running sums of the epoch in progress, for its log record.
    loss_sum: dict[str, float] = field(default_factory=dict)
    loss_count: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    # Per-step task weights and gradient conflicts of the epoch in progress (conflicts.py).
    step_log: dict = field(default_factory=dict)
    epoch_train_seconds: float = 0.0  # time in training steps, epoch in progress
    elapsed_seconds: float = 0.0  # time in steps and evaluations, whole run


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: the run stopped after a step and saved its state for ``--resume``."""

    def __init__(self, signum: int, out: Path, step: int):
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after step {step}; the state is saved in {out / 'last'}. "
            f"Resume with: minbert train --resume {out}"
        )


class Trainer:
    def __init__(self, config: Config, out_dir: str | Path, resume: bool = False):
        """A new run in ``out_dir``, or with ``resume`` the run saved there in ``last/``."""
        self.config = config
        self.out = Path(out_dir)
        self._prepare_out_dir(resume)
        seed_everything(config.train.seed)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.device = resolve_device(config.train.device)
        self.bf16 = use_bf16(config.train.precision, self.device)
        m = config.model
        encoder, self.tokenizer = load_pretrained(
            m.name,
            m.attention,
            hidden_dropout=None if m.hidden_dropout == -1 else m.hidden_dropout,
            attention_dropout=None if m.attention_dropout == -1 else m.attention_dropout,
            ptb_text=config.data.ptb_text,
        )
        self.tasks = list(config.train.tasks)
        self.train_data = {t: load_split(config, t, "train", self.tokenizer) for t in self.tasks}
        self.dev_data = {t: load_split(config, t, "dev", self.tokenizer) for t in self.tasks}
        self.heldout = {}  # training rows kept out of training to calibrate a task's threshold
        for t in self.tasks:
            if config.head(t).calibrate:
                self.train_data[t], self.heldout[t] = hold_out(
                    self.train_data[t], config.head(t).calibrate, config.train.seed
                )
                log.info(
                    "%s: %d training rows held out to calibrate the decision threshold, %d "
                    "left to train on",
                    t,
                    len(self.heldout[t]),
                    len(self.train_data[t]),
                )
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
            parameter_groups(self.model, config.train.weight_decay, self._peak_lr),
            lr=config.train.lr,
            betas=tuple(config.train.betas),
            eps=config.train.eps,
            weight_decay=config.train.weight_decay,
            compiled=config.train.compile_optimizer,
        )
        self.scheduler = warmup_schedule(
            self.optimizer,
            config.train.lr_schedule,
            total_steps,
            round(config.train.warmup_ratio * total_steps),
        )
        self.strategy = build_strategy(config.train.strategy, config.train, self.model)
        self.smart = Smart(config.train.smart, self.model) if config.train.smart.enabled else None
        decay = config.train.ema_decay
        self.average = WeightAverage(self.model, decay) if decay else None
        self.state = RunState()
        self._stop_signal: int | None = None
        if resume:
            self._restore(load_state(recover(self.out / "last")))

    # -- set-up --------------------------------------------------------------------------------

    def _peak_lr(self, name: str) -> float | None:
        """A parameter's own peak LR (None: ``train.lr``): ``head_lr`` for the heads, and
        ``lr * layer_lr_decay ** depth`` for encoder layers ``depth`` below the top."""
        cfg = self.config.train
        if cfg.head_lr and MultiTaskModel.is_head_parameter(name):
            return cfg.head_lr
        depth = self.model.depth_below_top(name)
        if cfg.layer_lr_decay < 1 and depth:
            return cfg.lr * cfg.layer_lr_decay**depth
        return None

    def _prepare_out_dir(self, resume: bool) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise TrainingError(f"cannot write to the output folder {self.out}: {exc}") from exc
        free = shutil.disk_usage(self.out).free
        if free < MIN_FREE_BYTES:
            raise TrainingError(
                f"only {free / 2**20:.0f} MiB free in {self.out}; a run needs at least "
                f"{MIN_FREE_BYTES / 2**20:.0f} MiB for its checkpoints"
            )
        if not resume:
            write_atomic(self.out / "config.toml", self.config.to_toml())
            for stale in ("metrics.jsonl", "final.json"):  # a fresh run owns its folder
                (self.out / stale).unlink(missing_ok=True)
            shutil.rmtree(self.out / "last", ignore_errors=True)
        handler = logging.FileHandler(
            self.out / "train.log", mode="a" if resume else "w", encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("minbert").addHandler(handler)
        self._log_handler = handler

    # -- resumable state ------------------------------------------------------------------------

    def _training_state(self) -> dict:
        return {
            "run": asdict(self.state),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "smart": self.smart.state_dict() if self.smart else {},
            "average": self.average.state_dict() if self.average else {},
            "streams": {t: s.state_dict() for t, s in self.streams.items()},
            "rng": rng_state(),
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.strategy.load_state_dict(state["strategy"])
        if self.smart is not None:
            self.smart.load_state_dict(state.get("smart", {}))
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        for task, stream in state["streams"].items():
            self.streams[task].load_state_dict(stream)
        self.state = RunState(**state["run"])
        set_rng_state(state["rng"])
        # Epoch records written after the checkpoint are redone (identically) by the resume.
        kept = [r for r in self._metrics() if r["epoch"] < self.state.epoch]
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        log.info(
            "resumed %s at step %d (epoch %d, step %d of it)",
            self.out,
            self.state.step,
            self.state.epoch,
            self.state.step_in_epoch,
        )

    def _metrics(self) -> list[dict]:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def save_checkpoint(self) -> None:
        """Write ``RUN/last/`` (atomically). A model with non-finite weights is never saved."""
        self._check_finite_weights()
        save_state(self.out / "last", self._training_state())

    def _check_finite_weights(self) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingError(
                    f"parameter {name} holds NaN/inf after step {self.state.step}; "
                    "nothing was saved over the previous checkpoint"
                )

    def _plan(self, epoch: int) -> list[dict[str, int]]:
        t = self.config.train
        return plan_epoch(
            t.schedule, self.sizes, t.batch_size, t.sampling, epoch, t.epochs, t.steps_per_epoch
        )

    # -- the loop -------------------------------------------------------------------------------

    def train_step(self, step_plan: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
        """One optimiser step. Returns the loss and batch size of each task in it; the losses
        are empty when the step was skipped for a non-finite value (``on_nonfinite = skip``)."""
        self.model.train()
        if self.config.model.mode == "frozen":
            self.model.encoder.eval()  # no dropout in a frozen encoder
        losses = {}
        objectives = {}  # what the strategy trains on: the task loss plus its auxiliary terms
        sizes = {}
        for task, size in step_plan.items():
            head = self.config.head(task)
            batch = self.streams[task].take(size).to(self.device)
            sizes[task] = len(batch)
            if head.rdrop:
                batch = batch.twice()
            with autocast(self.device, self.bf16):
                if self.smart is None:
                    outputs, extra = self._forward(task, batch)
                else:
                    outputs, extra = self.smart.forward(self.model, task, batch)
            targets = self.model.training_targets(task, batch.labels)
            losses[task] = self._task_loss(task, outputs, targets)  # R-Drop: both passes' mean
            objectives[task] = losses[task] if extra is None else losses[task] + extra
            if head.cosent:
                ranking = cosent(outputs, targets, head.cosent_scale)
                objectives[task] = objectives[task] + head.cosent * ranking
            if head.rdrop:
                first, second = outputs.chunk(2)
                consistency = divergence(TASKS[task].label_kind, first, second)
                objectives[task] = objectives[task] + head.rdrop * consistency
        bad = [t for t, loss in objectives.items() if not torch.isfinite(loss)]
        if bad:
            return self._nonfinite(f"loss of {', '.join(bad)}", sizes)
        conflicts = None
        every = self.config.train.log_conflicts_every
        if every and (self.state.step + 1) % every == 0:
            conflicts = self._measure_conflicts(losses)
        weights = self.strategy.backward(objectives, self.model.shared_parameters())
        trained = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if self.config.train.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(trained, self.config.train.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in trained])
        if not torch.isfinite(norm):
            return self._nonfinite(f"gradient of {', '.join(losses)}", sizes)
        self.optimizer.step()
        if self.smart is not None:
            self.smart.after_step(self.model)
        if self.average is not None:
            self.average.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        if self.strategy.weights_change:
            log_weights(self.state.step_log, self.state.step, weights, self.tasks)
        if conflicts is not None:
            log_conflicts(self.state.step_log, self.state.step, conflicts)
        return {t: loss.item() for t, loss in losses.items()}, sizes

    def _task_loss(self, task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        head = self.config.head(task)
        return task_loss(TASKS[task], outputs, targets, head.label_smoothing, head.ordinal_width)

    def _forward(self, task: str, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's outputs, and the auxiliary loss its config adds (None when none)."""
        head = self.config.head(task)
        if not head.contrastive:
            return self.model(task, batch), None
        outputs, u, v = self.model.forward_embedded(task, batch)
        term = in_batch_contrastive(u, v, batch.labels, head.contrastive_scale)
        return outputs, head.contrastive * term

    def _measure_conflicts(self, losses: dict[str, torch.Tensor]) -> dict:
        """Cosines and norms of every task's gradient on the shared parameters (conflicts.py).

        Tasks not in this step are measured on a probe batch, under a forked RNG, so that
        measuring leaves the training run exactly as it would have been.
        """
        shared = self.model.shared_parameters()
        grads = {t: flat_gradient(loss, shared) for t, loss in losses.items()}
        missing = [t for t in self.tasks if t not in grads]
        if missing:
            cfg = self.config.train
            with torch.random.fork_rng():
                for task in missing:
                    batch = probe_batch(
                        self.train_data[task],
                        cfg.batch_size,
                        cfg.seed,
                        self.state.step + 1,
                        self.tokenizer.pad_id,
                    ).to(self.device)
                    with autocast(self.device, self.bf16):
                        outputs = self.model(task, batch)
                    targets = self.model.training_targets(task, batch.labels)
                    loss = self._task_loss(task, outputs, targets)
                    grads[task] = flat_gradient(loss, shared, retain_graph=False)
        return conflict_stats({t: grads[t] for t in self.tasks})

    def _nonfinite(self, what: str, sizes: dict[str, int]) -> tuple[dict, dict[str, int]]:
        step = self.state.step + 1
        if self.config.train.on_nonfinite == "error":
            raise TrainingError(
                f"non-finite {what} at step {step} (epoch {self.state.epoch}); "
                "set train.on_nonfinite = 'skip' to skip such steps"
            )
        log.warning("step %d skipped: non-finite %s", step, what)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the step's slot in the LR schedule is used up all the same
        self.state.step += 1
        self.state.skipped += 1
        return {}, sizes

    def run(self) -> dict:
        """Train (or go on training) to the end, then write the results. SIGINT/SIGTERM stop
        after the current step with a checkpoint (``TrainingInterrupted``)."""
        cfg = self.config.train
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
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            while self.state.epoch <= cfg.epochs and self._epoch_steps(self.state.epoch) > 0:
                self._run_epoch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.finish(self.state.elapsed_seconds)

    def _on_signal(self, signum: int, frame) -> None:
        self._stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once
        log.warning("%s: stopping after this step", signal.Signals(signum).name)

    def _epoch_steps(self, epoch: int) -> int:
        """Steps of ``epoch``'s plan that the run will make (``max_steps`` may cut it short)."""
        first = sum(len(p) for p in self.plans[: epoch - 1])
        return max(0, min(len(self.plans[epoch - 1]), self.total_steps - first))

    def _run_epoch(self) -> None:
        cfg = self.config.train
        st = self.state
        epoch = st.epoch
        plan = self.plans[epoch - 1][: self._epoch_steps(epoch)]
        bar = tqdm(
            plan[st.step_in_epoch :],
            desc=f"epoch {epoch}/{cfg.epochs}",
            initial=st.step_in_epoch,
            total=len(plan),
            disable=not cfg.progress,
            dynamic_ncols=True,
            # in a log file rather than a terminal, a line every 30 s is enough
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        for step_plan in bar:
            started = time.perf_counter()
            losses, sizes = self.train_step(step_plan)
            for t, value in losses.items():
                st.loss_sum[t] = st.loss_sum.get(t, 0.0) + value
                st.loss_count[t] = st.loss_count.get(t, 0) + 1
            for t, n in sizes.items():
                st.seen[t] = st.seen.get(t, 0) + n
            st.step_in_epoch += 1
            spent = time.perf_counter() - started
            st.epoch_train_seconds += spent
            st.elapsed_seconds += spent
            bar.set_postfix(
                {t: f"{st.loss_sum[t] / st.loss_count[t]:.3f}" for t in losses}, refresh=False
            )
            if self._stop_signal is not None:
                bar.close()
                self.save_checkpoint()
                raise TrainingInterrupted(self._stop_signal, self.out, st.step)
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self._end_epoch(epoch, plan)

    def _peak_memory(self) -> dict[str, float]:
        """Peak memory so far: the process's resident set, and on CUDA the allocator's peak."""
        peak = {"peak_rss_mib": round(process_peak_rss_mib())}
        if self.device.type == "cuda":
            peak["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB)
        return peak

    def _end_epoch(self, epoch: int, plan: list[dict[str, int]]) -> None:
        cfg = self.config.train
        st = self.state
        eval_start = time.perf_counter()
        with self._evaluated_weights():
            calibration = self._calibrate()
            dev, _ = evaluate(
                self.model, self.dev_data, cfg.eval_batch_size, self.device, self.bf16, cfg.progress
            )
        st.elapsed_seconds += time.perf_counter() - eval_start
        record = {
            "epoch": epoch,
            "step": st.step,
            "train_loss": {t: st.loss_sum[t] / st.loss_count[t] for t in st.loss_count},
            "examples": {t: st.seen.get(t, 0) for t in self.tasks},
            "planned_examples": planned_examples(plan),
            "skipped_steps": st.skipped,
            "dev": dev,
            "lr": self.scheduler.get_last_lr()[0],
            "train_seconds": round(st.epoch_train_seconds, 2),
            "elapsed_seconds": round(st.elapsed_seconds, 2),
            **self._peak_memory(),
            **epoch_fields(st.step_log),
        }
        if calibration:
            record["calibration"] = calibration
        records = [*self._metrics(), record]
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        log.info(
            "epoch %d: examples seen %s; train loss %s; dev %s (%.0fs training)",
            epoch,
            record["examples"],
            _fmt(record["train_loss"]),
            _fmt(dev),
            record["train_seconds"],
        )
        if "conflicts" in record:
            log.info("epoch %d: conflict rate %s", epoch, record["conflicts"]["conflict_rate"])
        if dev["overall_leaderboard"] > st.best_score:
            st.best_score, st.best_epoch = dev["overall_leaderboard"], epoch
            with self._evaluated_weights():
                self._check_finite_weights()
                save_model_dir(
                    self.model,
                    self.tokenizer,
                    self.config,
                    self.out / "best",
                    {"epoch": epoch, "step": st.step, "dev": dev},
                )
        st.epoch, st.step_in_epoch = epoch + 1, 0
        st.loss_sum, st.loss_count, st.seen = {}, {}, {}
        st.step_log = {}
        st.epoch_train_seconds = 0.0
        self.save_checkpoint()

    def _calibrate(self) -> dict[str, dict]:
        """Move each calibrated task's threshold to the one most accurate on its held-out rows."""
        found = {}
        for task, data in self.heldout.items():
            before = predict(
                self.model, data, self.config.train.eval_batch_size, self.device, self.bf16
            )
            threshold = self.model.threshold(task)
            at_zero = accuracy((before.outputs + threshold.item() > 0).astype(float), data.labels)
            shift, heldout_accuracy = best_threshold(before.outputs, data.labels)
            threshold += shift  # the outputs were already less the old threshold
            found[task] = {
                "threshold": round(threshold.item(), 4),
                "heldout_rows": len(data),
                "heldout_accuracy": round(heldout_accuracy, 4),
                "heldout_accuracy_at_0": round(at_zero, 4),
            }
            log.info(
                "%s: decision threshold %.3f (held-out accuracy %.4f)",
                task,
                threshold,
                heldout_accuracy,
            )
        return found

    def _evaluated_weights(self):
        """The weights that are scored and saved: the average when ``train.ema_decay`` is on."""
        return self.average.swapped_in() if self.average is not None else nullcontext()

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
        write_atomic(self.out / "final.json", json.dumps(summary, indent=2) + "\n")
        report = write_report(self.out)
        log.info("report: %s", report / "summary.md")
        logging.getLogger("minbert").removeHandler(self._log_handler)
        self._log_handler.close()
        return summary


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items())
