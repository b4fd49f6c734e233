"""Checkpointing: ``RUN/last/`` every ``train.checkpoint_every`` steps and after the last
step of each epoch, before its evaluation: a stop during an evaluation (or the final
predictions) then resumes with that evaluation, never with training steps done again."""

from __future__ import annotations

from minbert.train.callbacks.base import Callback


class Checkpoint(Callback):
    name = "checkpoint"
    every_rank = True  # saving gathers every rank's generators

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer) -> None:
        st = trainer.state
        epoch_done = st.step_in_epoch == len(trainer.plans[st.epoch - 1])
        if epoch_done or (self.every and st.step % self.every == 0):
            trainer.save_checkpoint()
