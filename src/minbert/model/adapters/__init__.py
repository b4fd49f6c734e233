"""Adapters: small modules added to a shared encoder, wrapping the layers they adapt.

The ``[adapter]`` table picks one (``kind``): ``lora`` (lora.py), ``molora`` (per-task LoRA
experts, or a routed mixture: molora.py) or ``pals`` (projected attention layers: pals.py).
Each installs itself on a built ``MultiTaskModel`` (its shared layers, and the top layers a
task owns) and returns an ``Adapter``: what the model tells it (the task of a forward) and
what the rest of the toolkit asks of it (which parameters are its own, extra loss terms,
pairs to merge on export).

Adapter parameters carry a marker in their names (``.lora_``, ``.pals.``, ``adapters.``), so
the base weights keep their names and ``train.trainable`` globs can name either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from minbert.model.adapters.base import (
    Adapter,
    AdapterContext,
    is_adapter_parameter,
    is_base_parameter,
    task_layers,
)
from minbert.model.adapters.lora import LoRAConfig
from minbert.model.adapters.molora import MoLoRAConfig
from minbert.model.adapters.pals import PALsConfig
from minbert.settings import ConfigError, setting

if TYPE_CHECKING:
    from minbert.model.multitask import MultiTaskModel


@dataclass(frozen=True)
class AdapterConfig:
    kind: Literal["none", "lora", "molora", "pals"] = setting(
        "none",
        "none (full fine-tuning), lora, molora (a LoRA per task, or routed experts) or pals",
    )
    train_base: bool = setting(
        False,
        "also train the base encoder's own weights (LoRA on top of full fine-tuning); off: "
        "they stay frozen whatever train.trainable says, and best/ stores only what changed",
    )
    lr: float = setting(
        0.0,
        "peak learning rate of the adapter's parameters (0: train.lr); with the base frozen "
        "it is the encoder side's only rate",
        min=0.0,
    )
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"doc": "LoRA (lora.py)"})
    molora: MoLoRAConfig = field(
        default_factory=MoLoRAConfig, metadata={"doc": "LoRA experts (molora.py)"}
    )
    pals: PALsConfig = field(
        default_factory=PALsConfig, metadata={"doc": "projected attention layers (pals.py)"}
    )

    @property
    def on(self) -> bool:
        return self.kind != "none"

    def check(self, tasks: list[str]) -> None:
        if self.kind == "lora":
            self.lora.check("adapter.lora")
        elif self.kind == "molora":
            self.molora.check("adapter.molora", tasks)
        elif self.kind == "pals":
            self.pals.check("adapter.pals", tasks)
        if self.kind != "lora" and self.lora.load:
            raise ConfigError("adapter.lora.load: needs adapter.kind = 'lora'")

    @property
    def freezes_base(self) -> bool:
        return self.on and not self.train_base


def describe_adapter(config: AdapterConfig) -> str:
    """One line on the adapter a config installs (the run report's)."""
    if not config.on:
        return "none (full fine-tuning)"
    base = "base trained too" if config.train_base else "base frozen"
    if config.kind == "lora":
        c = config.lora
        what = f"LoRA r={c.r}, alpha={c.alpha:g} on {', '.join(c.targets)}"
    elif config.kind == "pals":
        what = f"PALs per task, d={config.pals.size}, {config.pals.heads} heads"
    else:
        c = config.molora
        what = (
            f"{c.experts} LoRA experts routed per token (top {c.top_k}), r={c.r}"
            if c.router == "token"
            else f"a LoRA per task, r={c.r}"
        )
    return f"{what} ({base})"


def install_adapter(model: MultiTaskModel, config: AdapterConfig) -> Adapter | None:
    if not config.on:
        return None
    from minbert.model.adapters import lora, molora, pals

    installers = {"lora": lora.install, "molora": molora.install, "pals": pals.install}
    return installers[config.kind](model, config, AdapterContext())


__all__ = [
    "describe_adapter",
    "Adapter",
    "AdapterConfig",
    "AdapterContext",
    "install_adapter",
    "is_adapter_parameter",
    "is_base_parameter",
    "task_layers",
]
