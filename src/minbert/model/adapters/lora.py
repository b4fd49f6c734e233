"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update,

    y = W x + b + (alpha / r) * B A dropout(x),    A (r, in), B (out, r),

A initialised as loralib does (Kaiming-uniform, a = sqrt(5)) and B at zero, so a new adapter
leaves the model's function unchanged.

``LoRALinear`` *is* an ``nn.Linear``: it keeps ``weight`` and ``bias`` under their names (base
checkpoints load as before) and holds one low-rank pair per adapter name, as peft holds them
(``<layer>.lora_A.<name>.weight``). A forward adds its one pair (plain LoRA: ``default``), or
with ``per_task`` the pair of the task being run (per-task experts, ``molora.py``).

peft's files: ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module path in BertModel>.lora_A.weight`` (the adapter's name dropped).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.model.adapters.base import Adapter, AdapterContext, task_layers
from minbert.model.bert import BertLayer, BertModel
from minbert.model.dropout import Dropout
from minbert.settings import ConfigError, setting

# The linear layers of a BERT layer, by their names inside it (HF's names).
LAYER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
ALL_TARGETS = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
PEFT_PREFIX = "base_model.model."
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class LoRAConfig:
    r: int = setting(8, "rank of each low-rank update", min=1)
    alpha: float = setting(16.0, "the update is scaled by alpha / r", min=0.0)
    dropout: float = setting(0.1, "dropout on the layer's input to the update", min=0.0, max=0.9)
    targets: list[str] = setting(
        ALL_TARGETS,
        "the linear layers adapted in every BERT layer, by the end of their name (peft's "
        "rule: 'output.dense' is the attention's and the feed-forward's output projection; "
        "'attention.output.dense' the attention's alone)",
    )
    load: str = setting(
        "",
        "start from this peft LoRA adapter directory (adapter_config.json, "
        "adapter_model.safetensors) instead of B = 0; its rank and layers must be these",
    )

    def check(self, key: str) -> None:
        if not self.targets:
            raise ConfigError(f"{key}.targets: name at least one layer, e.g. {ALL_TARGETS}")
        for target in self.targets:
            if not matching_linears(target):
                raise ConfigError(
                    f"{key}.targets: {target!r} matches no linear layer of a BERT layer; "
                    f"they are {list(LAYER_LINEARS)}"
                )


def matching_linears(target: str) -> list[str]:
    """The names (inside a BERT layer) that ``target`` names: itself or a name ending in
    ``.target``, as peft matches ``target_modules``."""
    return [n for n in LAYER_LINEARS if n == target or n.endswith("." + target)]


def adapted_names(targets: list[str]) -> list[str]:
    return [n for n in LAYER_LINEARS if any(n in matching_linears(t) for t in targets)]


class LoRALinear(nn.Linear):
    """``base``'s weight and bias (the same tensors, same names) plus a low-rank pair per
    name in ``names``. ``per_task``: a forward adds the pair named by ``context.task`` (none
    for another task, or no task); else it adds its pairs (plain LoRA has one)."""

    def __init__(
        self,
        base: nn.Linear,
        names: list[str],
        r: int,
        alpha: float,
        dropout: float,
        context: AdapterContext | None = None,
        per_task: bool = False,
    ):
        nn.Module.__init__(self)  # not nn.Linear's: the base's tensors are kept, not new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        if r > min(self.in_features, self.out_features):
            raise ConfigError(
                f"rank {r} is larger than a {self.out_features} x {self.in_features} layer "
                f"(at most {min(self.in_features, self.out_features)})"
            )
        self.weight, self.bias = base.weight, base.bias
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = Dropout(dropout)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.ModuleDict(
            {n: nn.Linear(self.in_features, r, bias=False, **like) for n in names}
        )
        self.lora_B = nn.ModuleDict(
            {n: nn.Linear(r, self.out_features, bias=False, **like) for n in names}
        )
        for name in names:
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))  # loralib's
            nn.init.zeros_(self.lora_B[name].weight)
        self.context, self.per_task = context, per_task
        self.merged: str | None = None  # the pair added into ``weight`` (merge)

    def delta(self, name: str) -> Tensor:
        """The update of pair ``name`` as a weight matrix (out, in)."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling

    def update(self, name: str, x: Tensor) -> Tensor:
        return self.lora_B[name](self.lora_A[name](self.lora_dropout(x))) * self.scaling

    def active(self) -> list[str]:
        if not self.per_task:
            return list(self.lora_A)
        task = self.context.task
        return [task] if task in self.lora_A else []

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        for name in self.active():
            if name != self.merged:
                out = out + self.update(name, x)
        return out

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Add pair ``name`` into ``weight`` (the forward then skips it): same function,
        one matmul. Unmerge before training on."""
        if self.merged is not None:
            raise RuntimeError(f"pair {self.merged!r} is merged already; unmerge it first")
        self.weight += self.delta(name).to(self.weight.dtype)
        self.merged = name

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is not None:
            self.weight -= self.delta(self.merged).to(self.weight.dtype)
            self.merged = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}, pairs={list(self.lora_A)}"


def wrap_layer(
    layer: BertLayer, config: LoRAConfig, names: list[str], make=None
) -> list[LoRALinear]:
    """Replace ``layer``'s targeted linear layers by LoRA layers holding pairs ``names``."""
    wrapped = []
    for path in adapted_names(config.targets):
        parent_path, _, attr = path.rpartition(".")
        parent = layer.get_submodule(parent_path)
        base = getattr(parent, attr)
        if isinstance(base, LoRALinear):
            raise ConfigError(f"{path}: already a LoRA layer (two adapters on one layer)")
        try:
            lora = (make or LoRALinear)(base, names, config.r, config.alpha, config.dropout)
        except ConfigError as exc:
            raise ConfigError(f"adapter: {path}: {exc}") from None
        setattr(parent, attr, lora)
        wrapped.append(lora)
    return wrapped


def lora_layers(module: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, sub in module.named_modules():
        if isinstance(sub, LoRALinear):
            yield name, sub


class LoRAAdapter(Adapter):
    kind = "lora"

    def merge_pairs(self) -> dict[str, str]:
        return {"encoder": "default"}


def install(model: nn.Module, config, context: AdapterContext) -> LoRAAdapter:
    """One LoRA pair (``default``) on the targeted layers of every BERT layer of ``model``,
    optionally started from a peft adapter (``adapter.lora.load``)."""
    for _, layer in task_layers(model):
        wrap_layer(layer, config.lora, ["default"])
    if config.lora.load:
        load_peft(model.encoder, config.lora.load, "default")
    return LoRAAdapter(config, context)


# -- peft's format -------------------------------------------------------------------------------


def save_peft(
    encoder: BertModel, out: str | Path, pair: str, config: LoRAConfig, base_name: str
) -> Path:
    """Write pair ``pair`` of ``encoder``'s LoRA layers as a peft adapter directory."""
    from minbert.model.loading import write_safetensors

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = dict(lora_layers(encoder))
    if not layers:
        raise ValueError("this encoder has no LoRA layer")
    state = {}
    for path, layer in layers.items():
        for part in ("lora_A", "lora_B"):
            weight = getattr(layer, part)[pair].weight
            state[f"{PEFT_PREFIX}{path}.{part}.weight"] = weight.detach().contiguous().cpu()
    write_safetensors(state, out / PEFT_WEIGHTS, metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_name,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(layers),  # exact module paths: no suffix ambiguity
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "task_type": None,
    }
    (out / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")
    return out


def load_peft(encoder: BertModel, directory: str | Path, pair: str) -> None:
    """Copy a peft LoRA adapter into pair ``pair`` of ``encoder``'s LoRA layers. Every way
    the adapter can disagree with the model (kind, scaling, layers, shapes) is an error that
    names the file and what was expected."""
    from minbert.model.loading import read_json, read_safetensors

    directory = Path(directory)
    config_file, weights = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    for path in (config_file, weights):
        if not path.is_file():
            raise ConfigError(f"{directory}: not a peft adapter directory ({path.name} missing)")
    peft = read_json(config_file, "peft adapter config")
    layers = dict(lora_layers(encoder))
    some = next(iter(layers.values()))
    expected = {
        "peft_type": "LORA",
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "r": some.r,
    }
    for key, want in expected.items():
        got = peft.get(key, want if key not in ("peft_type", "r") else None)
        if got != want:
            raise ConfigError(f"{config_file}: {key} is {got!r}; this model's LoRA needs {want!r}")
    if float(peft.get("lora_alpha", 8)) != some.alpha:
        raise ConfigError(
            f"{config_file}: lora_alpha is {peft.get('lora_alpha')}; adapter.*.alpha is {some.alpha}"
        )
    for key in ("rank_pattern", "alpha_pattern"):
        if peft.get(key):
            raise ConfigError(f"{config_file}: {key} is not supported (one rank, one alpha)")
    state = read_safetensors(weights)
    found: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        body = key.removeprefix(PEFT_PREFIX)
        path, _, part = body.rpartition(".lora_")
        if not key.startswith(PEFT_PREFIX) or part not in ("A.weight", "B.weight"):
            raise ConfigError(f"{weights}: {key!r} is not a LoRA weight of a BertModel adapter")
        found.setdefault(path, {})[f"lora_{part[0]}"] = tensor
    if set(found) != set(layers):
        missing, extra = sorted(set(layers) - set(found)), sorted(set(found) - set(layers))
        raise ConfigError(
            f"{weights}: its layers are not this model's LoRA layers "
            f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"not in the model {extra[:4]}{'...' if len(extra) > 4 else ''}); "
            f"expected {sorted(layers)[:3]}... ({len(layers)} layers)"
        )
    with torch.no_grad():
        for path, parts in found.items():
            layer = layers[path]
            for part, tensor in parts.items():
                target = getattr(layer, part)[pair].weight
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ConfigError(
                        f"{weights}: {path}.{part} has shape {tuple(tensor.shape)}; this model "
                        f"expects {tuple(target.shape)} (another base model or rank?)"
                    )
                target.copy_(tensor)
