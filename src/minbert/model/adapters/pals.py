"""Projected attention layers (Stickland & Murray 2019, "BERT and PALs").

Per task, a small function in parallel with every BERT layer, added before the layer's last
add & norm:

    h_out = LayerNorm(FFN(a) + a + V_D MH_l(V_E h)),    a = attention sub-layer of h

V_E (hidden -> d) and V_D (d -> hidden) belong to the task and are shared by all its layers;
MH_l is a multi-head self-attention of layer l in the d-space (queries, keys and values, no
output matrix: V_D is it). V_D starts at zero, so a new PAL leaves the model's function
unchanged (as LoRA's B). The paper's 768-wide BERT uses d = 204 with 12 heads (d / hidden =
0.27, 17 per head); for MiniLM's 384 the default is d = 96 with 6 heads (0.25, 16 per head:
the same share of the width, heads of the same size).

``PALLayer`` *is* a ``BertLayer``: it keeps the base layer's modules under their names and
adds ``pals.<task>`` (MH_l); the shared projections live at ``adapters.pals.<task>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from minbert.model.adapters.base import Adapter, AdapterContext, task_layers
from minbert.model.bert import BertLayer, Packing
from minbert.settings import ConfigError, setting


@dataclass(frozen=True)
class PALsConfig:
    size: int = setting(96, "d: the width of the projected space", min=1)
    heads: int = setting(6, "attention heads of each layer's PAL (d divisible by them)", min=1)

    def check(self, key: str, tasks: list[str]) -> None:
        if self.size % self.heads:
            raise ConfigError(
                f"{key}.size: {self.size} is not divisible by {key}.heads = {self.heads}"
            )
        if not tasks:
            raise ConfigError(f"{key}: PALs are per task; name train.tasks")


class Projections(nn.Module):
    """A task's V_E and V_D, shared by its PALs in every layer."""

    def __init__(self, hidden: int, size: int):
        super().__init__()
        self.encode = nn.Linear(hidden, size)
        self.decode = nn.Linear(size, hidden)
        nn.init.zeros_(self.decode.weight)
        nn.init.zeros_(self.decode.bias)


class ProjectedAttention(nn.Module):
    """MH_l: multi-head self-attention in the d-space, without an output matrix."""

    def __init__(self, size: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(size, 3 * size)

    def forward(self, x: Tensor, keep: Tensor, first_only: bool, packing: Packing | None) -> Tensor:
        """``x``: (B, T, d), or packed (n, d) with ``packing``; the output as the layer's."""
        padded = x if packing is None else packing.pad(x)  # (B, T, d)
        b, t, d = padded.shape
        q, k, v = self.qkv(padded).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if first_only:
            q = q[:, :, :1]  # (B, N, 1, D)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, N, T', D)
        context = context.transpose(1, 2).reshape(b, -1, d)  # (B, T', d)
        return context if packing is None or first_only else packing.pack(context)


class PALLayer(BertLayer):
    """``base``'s modules (same names) plus a PAL per task in ``tasks``; a forward adds the
    PAL of ``context.task`` (none for another task, or no task)."""

    def __init__(
        self,
        base: BertLayer,
        tasks: list[str],
        config: PALsConfig,
        projections: nn.ModuleDict,
        context: AdapterContext,
    ):
        nn.Module.__init__(self)  # not BertLayer's: the base's modules are kept
        self.attention, self.intermediate, self.output = (
            base.attention,
            base.intermediate,
            base.output,
        )
        self.pals = nn.ModuleDict({t: ProjectedAttention(config.size, config.heads) for t in tasks})
        # The shared V_E / V_D, registered once at adapters.pals; a plain reference here.
        self.__dict__["projections"] = projections
        self.context = context

    def forward(
        self, hidden: Tensor, keep: Tensor, first_only: bool = False, packing: Packing | None = None
    ) -> Tensor:
        attended = self.attention(hidden, keep, first_only, packing)
        task = self.context.task
        if task in self.pals:
            project = self.projections[task]
            pal = self.pals[task](project.encode(hidden), keep, first_only, packing)
            residual = attended + project.decode(pal)
        else:
            residual = attended
        return self.output(self.intermediate(attended), residual)


class PALsAdapter(Adapter):
    kind = "pals"


def install(model: nn.Module, config, context: AdapterContext) -> PALsAdapter:
    c = config.pals
    hidden = model.encoder.config.hidden_size
    projections = nn.ModuleDict({t: Projections(hidden, c.size) for t in model.tasks})
    model.adapters["pals"] = projections
    for owner, layer, replace in _replaceable_layers(model):
        tasks = list(model.tasks) if owner is None else [owner]
        replace(PALLayer(layer, tasks, c, projections, context))
    return PALsAdapter(config, context)


def _replaceable_layers(model: nn.Module):
    """(owner task, layer, a function putting a new layer in its place) for every layer."""
    layers = list(task_layers(model))
    lists = [model.encoder.encoder.layer] + [
        h.own_layers for h in model.heads.values() if h.own_layers is not None
    ]
    places = {
        id(layer): (module_list, i) for module_list in lists for i, layer in enumerate(module_list)
    }
    for owner, layer in layers:
        module_list, i = places[id(layer)]
        yield owner, layer, lambda new, ml=module_list, i=i: ml.__setitem__(i, new)
