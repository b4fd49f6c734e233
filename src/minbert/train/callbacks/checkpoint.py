"""Checkpointing: ``RUN/last/`` every ``train.checkpoint_every`` steps and after each epoch."""

from __future__ import annotations

from minbert.train.callbacks.base import Callback


class Checkpoint(Callback):
    name = "checkpoint"

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer) -> None:
        if self.every and trainer.state.step % self.every == 0:
            trainer.save_checkpoint()

    def on_epoch_end(self, trainer, record: dict) -> None:
        trainer.save_checkpoint()
