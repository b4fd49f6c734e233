"""The callbacks a run gets, from its config (``build_callbacks``); one file each."""

from __future__ import annotations

from minbert.data.augment import AugmentedStream
from minbert.train.callbacks.adapter_log import AdapterLog
from minbert.train.callbacks.augmentation import Augmentation
from minbert.train.callbacks.base import Callback, CallbackList
from minbert.train.callbacks.calibrate import Calibrate
from minbert.train.callbacks.checkpoint import Checkpoint
from minbert.train.callbacks.conflicts import ConflictProbes
from minbert.train.callbacks.ema import AverageWeights
from minbert.train.callbacks.predictions import FinalPredictions
from minbert.train.callbacks.report import Report
from minbert.train.callbacks.select_best import SelectBest
from minbert.train.callbacks.task_weights import TaskWeights


def build_callbacks(trainer, extra: list[Callback] = ()) -> CallbackList:
    """In the order they act: augmentation's log, calibration and logging, weight averaging, best-model choice,
    the checkpoint (at step ends), the end of the run; then ``extra`` (e.g. a search's
    pruner)."""
    cfg = trainer.config.train
    callbacks: list[Callback] = []
    augmented = {t: s for t, s in trainer.streams.items() if isinstance(s, AugmentedStream)}
    if augmented:
        callbacks.append(Augmentation(augmented))
    if trainer.heldout:
        callbacks.append(Calibrate(trainer.heldout))
    if trainer.strategy.weights_change:
        callbacks.append(TaskWeights())
    if cfg.log_conflicts_every:
        callbacks.append(ConflictProbes(cfg.log_conflicts_every))
    if trainer.model.adapter is not None:
        callbacks.append(AdapterLog(trainer.model.adapter))
    if cfg.ema_decay:
        callbacks.append(AverageWeights(trainer.model, cfg.ema_decay))
    callbacks += [
        SelectBest(cfg.select_by),
        Checkpoint(cfg.checkpoint_every),
        FinalPredictions(),
        Report(),
        *extra,
    ]
    if not trainer.world.is_main:
        callbacks = [c for c in callbacks if c.every_rank]
    return CallbackList(callbacks)


__all__ = ["Callback", "CallbackList", "build_callbacks"]
