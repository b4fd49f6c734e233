"""Gradient-conflict probes (``train.log_conflicts_every``; the measures: train/conflicts.py).

Tasks not in the step are measured on a probe batch, under a forked RNG, so that measuring
leaves the training run exactly as it would have been.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minbert.train.callbacks.base import Callback
from minbert.train.conflicts import conflict_stats, log_conflicts, probe_batch
from minbert.train.gradients import flat_gradient


class ConflictProbes(Callback):
    name = "conflicts"
    every_rank = True  # each rank's share of every task gradient is summed over the ranks

    def __init__(self, every: int):
        self.every = every
        self.pending: dict | None = None

    def on_losses(self, trainer, losses: dict[str, Tensor]) -> None:
        due = (trainer.state.step + 1) % self.every == 0
        self.pending = self.measure(trainer, losses) if due else None

    def on_optimizer_step(self, trainer, weights: dict[str, float]) -> None:
        if self.pending is not None:
            log_conflicts(trainer.state.step_log, trainer.state.step, self.pending)
            self.pending = None

    @staticmethod
    def measure(trainer, losses: dict[str, Tensor]) -> dict:
        """Cosines and norms of every task's gradient on the shared parameters."""
        shared = trainer.model.shared_parameters()
        grads = {t: flat_gradient(loss, shared) for t, loss in losses.items()}
        missing = [t for t in trainer.tasks if t not in grads]
        if missing:
            cfg = trainer.config.train
            with torch.random.fork_rng():
                for task in missing:
                    batch = probe_batch(
                        trainer.train_data[task],
                        cfg.batch_size,
                        cfg.seed,
                        trainer.state.step + 1,
                        trainer.tokenizer.pad_id,
                    ).to(trainer.device)
                    loss = trainer.objectives[task].plain_loss(trainer.model, batch)
                    grads[task] = flat_gradient(loss, shared, retain_graph=False)
        world = trainer.world
        for task in trainer.tasks:  # the mean of the ranks' gradients (each its own rows;
            world.all_reduce_(grads[task]).div_(world.size)  # probes: the same rows on each)
        return conflict_stats({t: grads[t] for t in trainer.tasks})
