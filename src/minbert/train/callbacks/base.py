"""What happens around the trainer's steps and epochs, one callback per concern.

The trainer calls, in this order of a run:
- ``on_losses(trainer, losses)`` before the backward pass of a step, with each objective's
  own loss (graph attached; the conflict probes differentiate it);
- ``on_optimizer_step(trainer, weights)`` after each optimiser step that was taken (not after
  a step skipped for a non-finite value), with the task weights the strategy used;
- ``on_step_end(trainer)`` after every step, its bookkeeping done (checkpoints, the last
  one of an epoch before its evaluation);
- ``evaluated_weights()``: the weights dev scoring and the best model use (EMA swaps its
  average in);
- ``on_evaluate(trainer, record)`` inside those weights, before dev scoring (calibration);
- ``on_epoch_end(trainer, record)`` once the epoch's record is written and the run state has
  moved on to the next epoch (best-model choice);
- ``on_train_end(trainer, summary)`` at the end (final predictions, the report).
A callback with state to resume keeps it in ``state_dict()``.

Under torchrun a callback acts on rank 0 alone (writing, logging, scoring), unless it is
``every_rank``: it takes part in collectives that every rank must make (the checkpoint
gathers every rank's generators; the conflict probes sum every rank's gradients).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext

from torch import Tensor


class Callback:
    name = "callback"
    every_rank = False

    def on_losses(self, trainer, losses: dict[str, Tensor]) -> None:
        pass

    def on_optimizer_step(self, trainer, weights: dict[str, float]) -> None:
        pass

    def on_step_end(self, trainer) -> None:
        pass

    def evaluated_weights(self) -> AbstractContextManager:
        return nullcontext()

    def on_evaluate(self, trainer, record: dict) -> None:
        pass

    def on_epoch_end(self, trainer, record: dict) -> None:
        pass

    def on_train_end(self, trainer, summary: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CallbackList(Callback):
    """Callbacks called in list order."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def on_losses(self, trainer, losses):
        for c in self.callbacks:
            c.on_losses(trainer, losses)

    def on_optimizer_step(self, trainer, weights):
        for c in self.callbacks:
            c.on_optimizer_step(trainer, weights)

    def on_step_end(self, trainer):
        for c in self.callbacks:
            c.on_step_end(trainer)

    def evaluated_weights(self) -> AbstractContextManager:
        stack = ExitStack()
        for c in self.callbacks:
            stack.enter_context(c.evaluated_weights())
        return stack

    def on_evaluate(self, trainer, record):
        for c in self.callbacks:
            c.on_evaluate(trainer, record)

    def on_epoch_end(self, trainer, record):
        for c in self.callbacks:
            c.on_epoch_end(trainer, record)

    def on_train_end(self, trainer, summary):
        for c in self.callbacks:
            c.on_train_end(trainer, summary)

    def state_dict(self) -> dict:
        return {c.name: c.state_dict() for c in self.callbacks}

    def load_state_dict(self, state: dict) -> None:
        for c in self.callbacks:
            c.load_state_dict(state.get(c.name, {}))
