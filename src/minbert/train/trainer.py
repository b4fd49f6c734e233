"""The training loop: plan -> objectives -> strategy -> step, with callbacks around it.

It names no method: the schedule says which objectives make a step, each objective gives its
loss, the gradient strategy turns the losses into gradients, and callbacks (calibration,
logging, weight averaging, best-model choice, checkpoints, predictions, the report) act at
step and epoch ends.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import weakref
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from minbert import machine
from minbert.config import Config, ConfigError
from minbert.data.schedules import plan_epochs
from minbert.data.splits import load_split, load_training_data, training_streams
from minbert.device import autocast, peak_memory, resolve_device, use_bf16
from minbert.eval.evaluate import evaluate
from minbert.model.loading import load_pretrained
from minbert.model.multitask import MultiTaskModel
from minbert.objectives import build_objectives, objective_heads
from minbert.run import lock
from minbert.run.layout import RunDir
from minbert.train.callbacks import Callback, build_callbacks
from minbert.train.conflicts import epoch_fields
from minbert.train.distributed import ALONE, RankLost, World
from minbert.train.optim import AdamW, parameter_groups, peak_lr_rule, warmup_schedule
from minbert.train.session import (
    StopRequested,
    StopSignals,
    TrainingError,
    TrainingInterrupted,
    claim_output_folder,
    open_output_folder,
)
from minbert.train.state import (
    RunState,
    check_finite,
    load_state,
    recover,
    rng_state,
    save_state,
    seed_everything,
    set_rng_state,
    upgrade_state,
    write_atomic,
)
from minbert.train.strategies import build_strategy
from minbert.train.trainable import freeze_all_but

log = logging.getLogger(__name__)
__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "load_split", "seed_everything"]


class Trainer:
    def __init__(
        self,
        config: Config,
        out_dir: str | Path,
        resume: bool = False,
        callbacks: list[Callback] = (),
        overwrite: bool = False,
        world: World = ALONE,
    ):
        """A new run in ``out_dir``, or with ``resume`` the run saved there in ``last/``.
        A folder that holds a run is refused unless ``overwrite`` (its files are removed
        once every input of the new run has been read). ``callbacks`` act after the
        built-in ones (e.g. a search's pruner). The folder is locked from here to the end
        of ``run()``: another process cannot write it meanwhile.

        Under torchrun every rank builds its own trainer with its ``world``
        (train/distributed.py); rank 0 alone touches the folder, and a failure on any rank
        stops every rank."""
        self.config = config
        self.world = world
        self.run_dir = RunDir(out_dir)
        world.check_same_config(config.to_toml())
        held = world.together(
            lambda: open_output_folder(self.run_dir, resume, overwrite) if world.is_main else None
        )
        self._unlock = weakref.finalize(self, lock.release, held) if held else lambda: None
        try:
            world.together(lambda: self._build(config, list(callbacks)))
            world.broadcast_module(self.model)
            world.seed_ranks(config.train.seed)
            if resume:
                self._resume()
            else:
                world.together(
                    lambda: (
                        claim_output_folder(self.run_dir, config.to_toml())
                        if world.is_main
                        else None
                    )
                )
        except BaseException:
            self._unlock()
            raise

    def _build(self, config: Config, callbacks: list[Callback]) -> None:
        """Everything the run needs, every input read (train, dev and test files, weights)."""
        t = config.train
        self.world.check_step_rows(t.batch_size * t.accumulate_steps)
        seed_everything(config.train.seed)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.device = self.world.device(resolve_device(config.train.device))
        self.bf16 = use_bf16(config.train.precision, self.device)
        self.machine = machine.describe(self.device, self.bf16)
        m = config.model
        encoder, self.tokenizer = load_pretrained(
            m.name,
            m.attention,
            hidden_dropout=None if m.hidden_dropout == -1 else m.hidden_dropout,
            attention_dropout=None if m.attention_dropout == -1 else m.attention_dropout,
            ptb_text=config.data.ptb_text,
        )
        self.tasks = list(config.train.tasks)
        self.train_data, self.heldout = load_training_data(config, self.tokenizer)
        self.dev_data = {t: load_split(config, t, "dev", self.tokenizer) for t in self.tasks}
        self.test_data = {t: load_split(config, t, "test", self.tokenizer) for t in self.tasks}
        self.model = MultiTaskModel(
            encoder, config.head_specs(), objective_heads(config, encoder), config.adapter
        ).to(self.device)
        freeze_all_but(self.model, config.trainable_patterns(), config.adapter.freezes_base)
        if config.train.log_conflicts_every and not self.model.shared_parameters():
            raise ConfigError("train.log_conflicts_every: no shared parameter trains")
        precision = functools.partial(autocast, self.device, self.bf16)
        self.objectives = build_objectives(config, self.model, precision, self.tokenizer)
        self.streams = training_streams(config, self.train_data, self.tokenizer)
        self.streams |= self.objectives.streams()
        sizes = self.objectives.planned_sizes(self.streams)
        self.plans = plan_epochs(t, sizes, self.objectives.auxiliary)
        self.total_steps = sum(len(p) for p in self.plans)  # max_steps cuts the plans short
        self.optimizer = AdamW(
            parameter_groups(self.model, t.weight_decay, peak_lr_rule(self.model, t)),
            lr=t.lr,
            betas=tuple(t.betas),
            eps=t.eps,
            weight_decay=t.weight_decay,
            compiled=t.compile_optimizer,
        )
        warmup = round(t.warmup_ratio * self.total_steps)
        self.scheduler = warmup_schedule(self.optimizer, t.lr_schedule, self.total_steps, warmup)
        self.strategy = build_strategy(t.strategy, t, self.model, self.world)
        self.state = RunState()
        self.callbacks = build_callbacks(self, callbacks)
        self.signals = StopSignals()

    def _resume(self) -> None:
        def read() -> dict | None:  # rank 0 reads the checkpoint; every rank gets it
            if not self.world.is_main:
                return None
            last = recover(self.run_dir.last)
            if last.exists():
                return load_state(last)
            # stopped before its first checkpoint: the same run, from its first step
            log.warning("%s: no checkpoint yet; the run starts again from step 1", last)
            write_atomic(self.run_dir.metrics, "")
            return None

        state = self.world.broadcast_object(self.world.together(read))
        if state is not None:
            self._restore(state)

    # -- resumable state ------------------------------------------------------------------------

    def _parts(self) -> dict:
        """Everything with a state_dict that an exact resume restores, by checkpoint key."""
        parts = {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "strategy": self.strategy,
            "objectives": self.objectives,
            "callbacks": self.callbacks,
        }
        return parts | {f"streams.{t}": s for t, s in self.streams.items()}

    def _training_state(self) -> dict:
        """The state to save (collective: rank 0 gathers every rank's random generators)."""
        parts = {key: part.state_dict() for key, part in self._parts().items()}
        return {"run": asdict(self.state), **self.world.gather_rng(rng_state()), **parts}

    def _restore(self, state: dict) -> None:
        state = upgrade_state(state)
        for key, part in self._parts().items():
            part.load_state_dict(state[key])
        self.state = RunState(**state["run"])
        set_rng_state(self.world.own_rng(state, self.run_dir.last))
        if self.world.is_main:
            # Epoch records written after the checkpoint are redone (identically) by the resume.
            kept = [r for r in self.run_dir.read_metrics() if r["epoch"] < self.state.epoch]
            write_atomic(self.run_dir.metrics, "".join(json.dumps(r) + "\n" for r in kept))
        st = self.state
        log.info(
            "resumed %s at step %d (epoch %d, step %d)",
            self.run_dir,
            st.step,
            st.epoch,
            st.step_in_epoch,
        )

    def save_checkpoint(self) -> None:
        """Write ``RUN/last/`` (atomically; rank 0, with every rank's part gathered). A model
        with non-finite weights is never saved."""
        self.check_finite_weights()
        state = self._training_state()
        if self.world.is_main:
            save_state(self.run_dir.last, state)

    def check_finite_weights(self) -> None:
        check_finite(self.model, self.state.step)

    # -- the loop -------------------------------------------------------------------------------

    def _train_mode(self) -> None:
        self.model.train()
        if not any(p.requires_grad for p in self.model.encoder.parameters()):
            self.model.encoder.eval()  # no dropout in a frozen encoder

    def train_step(self, step_plan: dict[str, int]) -> tuple[dict, dict, dict[str, int]]:
        """One optimiser step: for each micro-batch, each objective of the plan takes its
        rows and gives its loss, and the strategy backpropagates them; then clip and step.
        Returns each objective's loss, its extra terms (``"<name>.<term>"``) and its rows;
        the losses are empty when the step was skipped for a non-finite value."""
        self._train_mode()
        k = self.config.train.accumulate_steps
        micro = {}  # objective -> this rank's micro-batches, each with its share of the step
        sizes = {}
        for name, size in step_plan.items():
            rows = self.streams[self.objectives[name].source].take_rows(size)
            sizes[name] = len(rows)
            mine = self.world.shard(rows)
            micro[name] = [(c, len(c) / len(rows)) for c in np.array_split(mine, k) if len(c)]
            if not micro[name]:  # a rank with no row of a small last batch: a row weighted 0
                micro[name] = [(rows[:1], 0.0)]  # keeps its collectives in step with the rest
        losses, terms, weights = {}, {}, {}
        for i in range(k):
            parts, totals = {}, {}
            for name, chunks in micro.items():
                if i < len(chunks):
                    parts[name], totals[name] = self._micro_loss(name, *chunks[i])
            bad = [n for n, total in totals.items() if not torch.isfinite(total)]
            if self.world.any_true(bool(bad)):
                return self._nonfinite(f"loss of {', '.join(bad) or 'another rank'}", sizes)
            if not totals:  # fewer rows than micro-batches: this one has none here
                continue
            if i == 0:
                self.callbacks.on_losses(self, {n: p["loss"] for n, p in parts.items()})
            weights = self.strategy.backward(totals, self.model.shared_parameters())
            for name, named in parts.items():
                for part, value in named.items():  # each part as a mean over the whole step
                    into, key = (losses, name) if part == "loss" else (terms, f"{name}.{part}")
                    into[key] = into.get(key, 0.0) + value.item() * micro[name][i][1]
        self.world.sync_gradients(self.model)
        losses, terms = self.world.sum_floats(losses), self.world.sum_floats(terms)
        trained = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if self.config.train.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(trained, self.config.train.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in trained])
        if not torch.isfinite(norm):
            return self._nonfinite(f"gradient of {', '.join(losses)}", sizes)
        self.optimizer.step()
        self.objectives.after_step(self.model)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.callbacks.on_optimizer_step(self, weights)
        return losses, terms, sizes

    def _micro_loss(self, name: str, rows: np.ndarray, share: float) -> tuple[dict, Tensor]:
        """An objective's loss parts on ``rows``, and its total weighted by the rows' share
        of the step's (micro-batch losses add up to the whole batch's mean)."""
        objective = self.objectives[name]
        batch = self.streams[objective.source].batch(rows).to(self.device)
        loss = objective.loss(self.model, objective.prepare(batch))
        return loss.parts, loss.total if share == 1 else loss.total * share

    def _nonfinite(self, what: str, sizes: dict[str, int]) -> tuple[dict, dict, dict[str, int]]:
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
        return {}, {}, sizes

    def run(self) -> dict:
        """Train (or go on training) to the end, then write the results, and let go of the
        folder. SIGINT/SIGTERM stop after the current step with a checkpoint, or at once
        during an evaluation or the final predictions (``TrainingInterrupted``)."""
        try:
            with self.signals.caught():
                return self._run()
        except RankLost as exc:
            raise RankLost(
                f"{exc}. The state saved last is in {self.run_dir.last}; once every rank can "
                f"run, resume with: torchrun --nproc_per_node=N -m minbert train --resume "
                f"{self.run_dir.root} (the same {self.world.size} ranks in all)"
            ) from exc
        finally:
            self._unlock()

    def _run(self) -> dict:
        cfg = self.config.train
        log.info(
            "training %s on %s (%s; %s): %d steps over %d epoch(s), schedule %s",
            "+".join(self.objectives),
            self.device,
            self.config.model.name,
            machine.label(self.machine),
            self.total_steps,
            cfg.epochs,
            cfg.schedule,
        )
        if self.world.distributed:
            log.info(
                "rank 0 of %d (%s): each rank takes its share of every step's batch",
                self.world.size,
                self.world.backend,
            )
        while self.state.epoch <= len(self.plans):
            self._run_epoch()
            self._stop_if_signalled(f"after the evaluation of epoch {self.state.epoch - 1}")
        summary = {
            "best_epoch": self.state.best_epoch,
            "dev": None,  # the reloaded best model's (callbacks/predictions.py)
            "train_wall_seconds": round(self.state.elapsed_seconds, 1),
            "device": str(self.device),
            "bf16": self.bf16,
            "machine": self.machine,
            "parameters": {
                "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "total": sum(p.numel() for p in self.model.parameters()),
            },
        }
        if not self.world.is_main:
            return summary  # rank 0 alone predicts and reports
        try:
            with self.signals.interruptible(), self.world.all_local_threads(self.device):
                self.callbacks.on_train_end(self, summary)
        except StopRequested as stop:
            self._stop(stop.signum, "during the final predictions and report")
        return summary

    def _stop_if_signalled(self, during: str = "") -> None:
        """After a stop signal to any rank: raise ``TrainingInterrupted`` on every rank (the
        state is saved already)."""
        if signum := self._agreed_signal():
            self._stop(signum, during)

    def _agreed_signal(self) -> int:
        """The stop signal any rank received (0: none); every rank calls it at one point."""
        return self.world.max_int(self.signals.received or 0)

    def _stop(self, signum: int, during: str = "") -> None:
        step, ranks = self.state.step, self.world.size
        raise TrainingInterrupted(signum, self.run_dir.root, step, during, ranks)

    def _run_epoch(self) -> None:
        cfg = self.config.train
        st = self.state
        plan = self.plans[st.epoch - 1]
        bar = tqdm(
            plan[st.step_in_epoch :],
            desc=f"epoch {st.epoch}/{cfg.epochs}",
            initial=st.step_in_epoch,
            total=len(plan),
            disable=not (cfg.progress and self.world.is_main),
            dynamic_ncols=True,
            # in a log file rather than a terminal, a line every 30 s is enough
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        for step_plan in bar:
            started = time.perf_counter()
            losses, terms, sizes = self.train_step(step_plan)
            st.add_step(losses, terms, sizes)
            spent = time.perf_counter() - started
            st.epoch_train_seconds += spent
            st.elapsed_seconds += spent
            bar.set_postfix(
                {t: f"{st.loss_sum[t] / st.loss_count[t]:.3f}" for t in losses}, refresh=False
            )
            if signum := self._agreed_signal():
                bar.close()
                self.save_checkpoint()
                self._stop(signum)
            self.callbacks.on_step_end(self)
        bar.close()
        self._end_epoch(plan)

    def _end_epoch(self, plan: list[dict[str, int]]) -> None:
        """Rank 0 scores the epoch (the other ranks wait), then every rank moves on."""
        st = self.state
        record, stopped = None, 0
        if self.world.is_main:
            try:  # the state after the epoch's last step is saved (callbacks/checkpoint.py)
                record = self._score_epoch(plan)
            except StopRequested as stop:
                stopped = stop.signum
        if stopped := self.world.broadcast_object(stopped):
            self._stop(stopped, f"during the evaluation of epoch {st.epoch}")
        st.next_epoch()
        if record is not None:
            self.callbacks.on_epoch_end(self, record)

    def _score_epoch(self, plan: list[dict[str, int]]) -> dict:
        """The epoch's dev scores and record (``metrics.jsonl``); a stop signal during the
        evaluation raises ``StopRequested`` at once."""
        cfg = self.config.train
        st = self.state
        eval_start = time.perf_counter()
        extra: dict = {}
        with (
            self.signals.interruptible(),
            self.callbacks.evaluated_weights(),
            self.world.all_local_threads(self.device),
        ):
            self.callbacks.on_evaluate(self, extra)
            dev, _ = evaluate(
                self.model,
                self.dev_data,
                cfg.eval_batch_size,
                self.device,
                self.bf16,
                cfg.progress,
            )
            dev |= self.objectives.dev_metrics(self.model, self.device, self.bf16)
        st.elapsed_seconds += time.perf_counter() - eval_start
        lr = self.scheduler.get_last_lr()[0]
        record = st.epoch_record(list(self.objectives), plan, dev, lr) | peak_memory(self.device)
        record |= epoch_fields(st.step_log) | extra | {"machine": self.machine}
        if st.term_sum:
            record["train_terms"] = st.term_means()
        records = [*self.run_dir.read_metrics(), record]
        write_atomic(self.run_dir.metrics, "".join(json.dumps(r) + "\n" for r in records))
        log.info(
            "epoch %d: examples seen %s; train loss %s; dev %s (%.0fs training)",
            st.epoch,
            record["examples"],
            _fmt(record["train_loss"]),
            _fmt(dev),
            record["train_seconds"],
        )
        if "conflicts" in record:
            log.info("epoch %d: conflict rate %s", st.epoch, record["conflicts"]["conflict_rate"])
        return record


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items())
