"""What an adapter logs after each epoch (the routed experts' usage per task), into the
epoch's record of ``metrics.jsonl``. Counted since the previous epoch's evaluation on this
rank; a resumed epoch counts from the resume."""

from __future__ import annotations

from minbert.train.callbacks.base import Callback


class AdapterLog(Callback):
    name = "adapter_log"

    def on_evaluate(self, trainer, record: dict) -> None:
        record.update(trainer.model.adapter.epoch_log())
