"""What every adapter shares: the context a forward sets (the task), the ``Adapter`` object an
installed adapter returns, and which parameters are an adapter's or the base model's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from torch import nn

from minbert.settings import ConfigError

if TYPE_CHECKING:
    from minbert.model.adapters import AdapterConfig
    from minbert.model.multitask import MultiTaskModel

MARKERS = (".lora_", ".pals.", "adapters.")


class AdapterContext:
    """What an adapted layer reads at forward time: the task being run (None: no task, as
    for the MLM and SimCSE objectives)."""

    def __init__(self) -> None:
        self.task: str | None = None


class Adapter:
    """An installed adapter. Subclasses (one per kind) fill in what differs."""

    kind = "none"

    def __init__(self, config: AdapterConfig, context: AdapterContext):
        self.config = config
        self.context = context

    @contextmanager
    def task(self, name: str | None) -> Iterator[None]:
        before, self.context.task = self.context.task, name
        self.start()
        try:
            yield
        finally:
            self.context.task = before

    def start(self) -> None:
        """A forward begins (the router forgets the previous forward's balance loss)."""

    def epoch_log(self) -> dict:
        """What the run log records after each epoch (the router's expert usage per task)."""
        return {}

    def log_state(self) -> dict:
        """What ``epoch_log`` has counted so far, for the checkpoint."""
        return {}

    def load_log_state(self, state: dict) -> None:
        pass

    def terms(self) -> list:
        """Extra terms of every task's loss (the router's balance loss)."""
        return []

    def merge_pairs(self) -> dict[str, str]:
        """What ``export --merge`` writes: output name -> the LoRA pair merged into it."""
        raise ConfigError(f"adapter.kind = {self.kind!r}: nothing to merge into a BERT directory")


def is_adapter_parameter(name: str) -> bool:
    return any(marker in name for marker in MARKERS)


def is_base_parameter(name: str) -> bool:
    """The pretrained encoder's own weights (and a task's copies of its top layers)."""
    return not is_adapter_parameter(name) and (
        name.startswith("encoder.") or ".own_layers." in name
    )


def task_layers(model: MultiTaskModel) -> Iterator[tuple[str | None, nn.Module]]:
    """Every BERT layer of the model with the task it belongs to (None: shared)."""
    for layer in model.encoder.encoder.layer:
        yield None, layer
    for task, head in model.heads.items():
        for layer in head.own_layers or ():
            yield task, layer
