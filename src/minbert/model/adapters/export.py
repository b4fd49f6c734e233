"""Hugging Face directories of an adapted model (``minbert export RUN DIR [--merge]``).

- ``--merge``: the LoRA pairs added into the weights, written as a plain BERT directory; with
  a LoRA per task, one directory per task (``DIR/<task>/``), each what that task reads (its
  own top layers in place of the shared ones, when it has them).
- without: the base encoder as a BERT directory and the LoRA pairs as peft adapters beside it
  (``DIR/adapter/``, or ``DIR/adapters/<task>/``), which ``peft.PeftModel.from_pretrained``
  puts on that directory's ``BertModel``.

PALs and routed experts have no form a BERT directory or peft can hold: the base encoder is
written, and the run folder itself serves the adapted model (``minbert predict``, ``serve``).
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from minbert.model.adapters.lora import LoRALinear, lora_layers, save_peft
from minbert.model.adapters.pals import PALLayer
from minbert.model.bert import BertLayer, BertModel
from minbert.model.loading import export_pretrained
from minbert.settings import ConfigError


def plain_encoder(model: nn.Module, pair: str | None = None, task: str | None = None) -> BertModel:
    """A copy of ``model``'s encoder without adapters; with ``pair``, that LoRA pair merged
    first; with ``task``, the task's own top layers in place of the shared ones."""
    encoder = copy.deepcopy(model.encoder)
    own = model.heads[task].own_layers if task is not None else None
    if own:
        layers = encoder.encoder.layer
        for i, layer in enumerate(copy.deepcopy(own)):
            layers[len(layers) - len(own) + i] = layer
    for _, layer in lora_layers(encoder):
        if pair is not None and pair in layer.lora_A:
            layer.merge(pair)
    _unwrap(encoder)
    return encoder


def _unwrap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, LoRALinear):
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            plain.weight, plain.bias = child.weight, child.bias
            setattr(module, name, plain)
        elif isinstance(child, PALLayer):
            plain = BertLayer.__new__(BertLayer)
            nn.Module.__init__(plain)
            plain.attention, plain.intermediate, plain.output = (
                child.attention,
                child.intermediate,
                child.output,
            )
            setattr(module, name, plain)
            _unwrap(plain)
        else:
            _unwrap(child)


def export_adapted(
    model: nn.Module,
    tokenizer,
    config,
    out: str | Path,
    merge: bool,
    tasks: list[str] | None = None,
) -> list[str]:
    """Write the directories; returns what was written, a line each."""
    out, adapter = Path(out), model.adapter
    written = []
    if merge:
        pairs = adapter.merge_pairs()  # a clear error for PALs and routed experts
        chosen = pairs if tasks is None else _chosen(pairs, tasks)
        for label, pair in chosen.items():
            task = label if label in model.heads else None
            target = out if label == "encoder" else out / label
            export_pretrained(plain_encoder(model, pair, task), tokenizer, target)
            written.append(f"{target}: BERT with LoRA pair {pair!r} merged")
        return written
    if tasks is not None:
        raise ConfigError("--tasks applies to --merge (one merged directory per task)")
    export_pretrained(plain_encoder(model), tokenizer, out)
    written.append(f"{out}: the base encoder (BERT)")
    if adapter.kind == "lora" or (adapter.kind == "molora" and not adapter.routed):
        lora = config.adapter.lora if adapter.kind == "lora" else config.adapter.molora.lora()
        for label, pair in adapter.merge_pairs().items():
            target = out / "adapter" if label == "encoder" else out / "adapters" / label
            save_peft(model.encoder, target, pair, lora, "..")
            written.append(f"{target}: peft LoRA adapter {pair!r} (shared layers)")
    else:
        written.append(
            f"note: {adapter.kind} adapters have no Hugging Face form; the run folder serves them"
        )
    return written


def _chosen(pairs: dict[str, str], tasks: list[str]) -> dict[str, str]:
    unknown = [t for t in tasks if t not in pairs]
    if unknown:
        raise ConfigError(
            f"--tasks: {unknown} have no adapter in this run; it trained {sorted(pairs)}"
        )
    return {t: pairs[t] for t in tasks}
