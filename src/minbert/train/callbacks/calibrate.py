"""Threshold calibration: after each epoch, move each calibrated binary task's decision
threshold to the one most accurate on its held-out training rows (``heads.<task>.calibrate``)."""

from __future__ import annotations

import logging

from minbert.data.batching import EncodedTask
from minbert.eval.evaluate import predict
from minbert.eval.metrics import accuracy, best_threshold
from minbert.train.callbacks.base import Callback

log = logging.getLogger(__name__)


class Calibrate(Callback):
    name = "calibrate"

    def __init__(self, heldout: dict[str, EncodedTask]):
        self.heldout = heldout

    def on_evaluate(self, trainer, record: dict) -> None:
        """Adds ``calibration`` (threshold and held-out accuracies per task) to the record."""
        found = {}
        for task, data in self.heldout.items():
            before = predict(
                trainer.model,
                data,
                trainer.config.train.eval_batch_size,
                trainer.device,
                trainer.bf16,
            )
            threshold = trainer.model.threshold(task)
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
        if found:
            record["calibration"] = found
