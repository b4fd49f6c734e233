"""What an adapter logs after each epoch (the routed experts' usage per task), into the
epoch's record of ``metrics.jsonl``. Counted since the previous epoch's evaluation on this
rank; the counts so far travel in the checkpoint, so a resumed epoch logs what an
uninterrupted one does."""

from __future__ import annotations

from minbert.model.adapters.base import Adapter
from minbert.train.callbacks.base import Callback


class AdapterLog(Callback):
    name = "adapter_log"

    def __init__(self, adapter: Adapter):
        self.adapter = adapter

    def on_evaluate(self, trainer, record: dict) -> None:
        record.update(self.adapter.epoch_log())

    def state_dict(self) -> dict:
        return self.adapter.log_state()

    def load_state_dict(self, state: dict) -> None:
        self.adapter.load_log_state(state)
