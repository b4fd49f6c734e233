"""Task-weight logging, for strategies whose weights change (gradnorm, uncertainty)."""

from __future__ import annotations

from minbert.train.callbacks.base import Callback
from minbert.train.conflicts import log_weights


class TaskWeights(Callback):
    name = "task_weights"

    def on_optimizer_step(self, trainer, weights: dict[str, float]) -> None:
        log_weights(trainer.state.step_log, trainer.state.step, weights, trainer.tasks)
