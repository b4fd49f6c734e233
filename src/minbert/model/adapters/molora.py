"""LoRA experts on a shared encoder, in two forms (``adapter.molora.router``):

- ``none``: each task its own LoRA pair on every adapted layer (``lora_A.<task>``); the
  forward of task t adds t's pairs alone, so training one task never moves another's.
- ``token``: E experts shared by the tasks and a router per adapted layer. The router reads
  the layer's input token by token, keeps its top-k experts and renormalises their weights.
  Per token, because an adapted layer sees tokens (packed, without padding) and not sentences:
  routing a sentence would need a pooled summary the layer does not have, and a token's
  neighbours in a sentence can want different experts (as in Switch and Mixtral). A
  load-balancing term (Switch Transformer: E * sum_e f_e P_e, f_e the share of assignments and
  P_e the mean router probability of expert e; 1 when routing is uniform) joins every task's
  loss with ``balance_weight``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.model.adapters.base import Adapter, AdapterContext, task_layers
from minbert.model.adapters.lora import ALL_TARGETS, LoRAConfig, LoRALinear, wrap_layer
from minbert.objectives.base import Term
from minbert.settings import ConfigError, setting


@dataclass(frozen=True)
class MoLoRAConfig:
    r: int = setting(8, "rank of each expert", min=1)
    alpha: float = setting(16.0, "each expert's update is scaled by alpha / r", min=0.0)
    dropout: float = setting(0.1, "dropout on the layer's input to the experts", min=0.0, max=0.9)
    targets: list[str] = setting(
        ALL_TARGETS, "the linear layers adapted in every BERT layer (as adapter.lora.targets)"
    )
    router: Literal["none", "token"] = setting(
        "none",
        "none: one expert per task, the task's alone in its forward; token: adapter.molora."
        "experts shared experts, a router per layer choosing top_k of them per token",
    )
    experts: int = setting(4, "experts per adapted layer (router = 'token')", min=2)
    top_k: int = setting(2, "experts a token uses (router = 'token')", min=1)
    balance_weight: float = setting(
        0.01, "weight of the load-balancing term in every task's loss (router = 'token')", min=0.0
    )

    def lora(self) -> LoRAConfig:
        return LoRAConfig(r=self.r, alpha=self.alpha, dropout=self.dropout, targets=self.targets)

    def check(self, key: str, tasks: list[str]) -> None:
        self.lora().check(key)
        if self.router == "none" and not tasks:
            raise ConfigError(f"{key}.router: 'none' gives each task an expert; name train.tasks")
        if self.router == "token" and self.top_k > self.experts:
            raise ConfigError(f"{key}.top_k: {self.top_k} is more than experts = {self.experts}")


class RoutedContext(AdapterContext):
    """Also collects, during a forward, each routed layer's balance loss, and in training how
    often each task's tokens chose each expert (summed over layers)."""

    def __init__(self, experts: int) -> None:
        super().__init__()
        self.experts = experts
        self.balance: list[Tensor] = []
        self.usage: dict[str, Tensor] = {}

    def start(self) -> None:
        self.balance = []

    def record(self, probs: Tensor, chosen: Tensor, training: bool) -> None:
        e = self.experts
        probs, chosen = probs.reshape(-1, e), chosen.reshape(-1, chosen.shape[-1])
        counts = F.one_hot(chosen, e).sum((0, 1)).to(probs.dtype)  # (E,)
        share = counts / counts.sum()
        self.balance.append(e * (share * probs.mean(0)).sum())
        if training:
            key = self.task or "-"
            self.usage[key] = self.usage.get(key, 0) + counts.detach().cpu()

    def take_usage(self) -> dict[str, list[float]]:
        """Each task's share of assignments per expert since the last call."""
        shares = {t: (c / c.sum()).tolist() for t, c in self.usage.items()}
        self.usage = {}
        return shares


class RoutedLoRALinear(LoRALinear):
    """A LoRA layer whose pairs are experts mixed per token by ``lora_router``."""

    def __init__(self, base, names, r, alpha, dropout, context: RoutedContext, top_k: int):
        super().__init__(base, names, r, alpha, dropout, context)
        self.top_k = top_k
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_router = nn.Linear(self.in_features, len(names), bias=False, **like)
        nn.init.normal_(self.lora_router.weight, std=0.02)  # near-uniform routing at first

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        names, e, r = list(self.lora_A), len(self.lora_A), self.r
        logits = self.lora_router(x)  # under bf16 autocast the softmax still runs in float32
        probs = logits.softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        top, chosen = probs.topk(self.top_k, dim=-1)  # (..., k)
        gates = torch.zeros_like(probs).scatter(-1, chosen, top / top.sum(-1, keepdim=True))
        a = torch.cat([self.lora_A[n].weight for n in names])  # (E r, in)
        b = torch.cat([self.lora_B[n].weight for n in names], dim=1)  # (out, E r)
        z = F.linear(self.lora_dropout(x), a).unflatten(-1, (e, r))  # (..., E, r)
        z = (z * gates.unsqueeze(-1).to(z.dtype)).flatten(-2)  # (..., E r)
        self.context.record(probs, chosen, self.training)
        return out + F.linear(z, b) * self.scaling

    def merge(self, name: str) -> None:
        raise ConfigError("a routed mixture mixes its experts per token: it cannot be merged")


class RouterBalance(Term):
    """The balance loss of the forward just run, averaged over the routed layers."""

    name = "balance"

    def __init__(self, context: RoutedContext, weight: float):
        self.context, self.weight = context, weight

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if not self.context.balance:
            return outputs.new_zeros((), dtype=torch.float32)
        return self.weight * torch.stack(self.context.balance).mean()


class MoLoRAAdapter(Adapter):
    kind = "molora"

    def __init__(self, config, context: AdapterContext, tasks: list[str]):
        super().__init__(config, context)
        self.tasks = tasks

    @property
    def routed(self) -> bool:
        return self.config.molora.router == "token"

    def start(self) -> None:
        if self.routed:
            self.context.start()

    def terms(self) -> list[Term]:
        c = self.config.molora
        return [RouterBalance(self.context, c.balance_weight)] if self.routed else []

    def epoch_log(self) -> dict:
        return {"expert_usage": self.context.take_usage()} if self.routed else {}

    def log_state(self) -> dict:
        if not self.routed:
            return {}
        return {"usage": {t: c.tolist() for t, c in self.context.usage.items()}}

    def load_log_state(self, state: dict) -> None:
        if self.routed:
            self.context.usage = {t: torch.tensor(c) for t, c in state.get("usage", {}).items()}

    def merge_pairs(self) -> dict[str, str]:
        if self.routed:
            return super().merge_pairs()
        return {task: task for task in self.tasks}


def install(model: nn.Module, config, context: AdapterContext) -> MoLoRAAdapter:
    c = config.molora
    tasks = list(model.tasks)
    if c.router == "token":
        context = RoutedContext(c.experts)
        make = functools.partial(RoutedLoRALinear, context=context, top_k=c.top_k)
        for _, layer in task_layers(model):
            wrap_layer(layer, c.lora(), [f"expert{i}" for i in range(c.experts)], make)
    else:
        make = functools.partial(LoRALinear, context=context, per_task=True)
        for owner, layer in task_layers(model):  # a task's own layers: its expert alone
            wrap_layer(layer, c.lora(), tasks if owner is None else [owner], make)
    return MoLoRAAdapter(config, context, tasks)
