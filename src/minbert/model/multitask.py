"""One shared encoder and a head per task: ``model(task, batch)``."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from minbert.data.batching import Batch, Segment
from minbert.data.tasks import TASKS
from minbert.model.adapters import AdapterConfig, install_adapter
from minbert.model.bert import AttentionImpl, BertModel, set_attention
from minbert.model.heads import BiEncoderHead, HeadSpec, build_head


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        encoder: BertModel,
        heads: dict[str, HeadSpec],
        objective_heads: dict[str, nn.Module] | None = None,
        adapter: AdapterConfig | None = None,
    ):
        """``heads``: task -> its head's spec (``Config.head_specs()``), in task order.
        ``objective_heads``: the pre-training objectives' own modules (the MLM head,
        SimCSE's MLP), by objective name. ``adapter``: the ``[adapter]`` table; the adapter
        wraps the shared layers and the tasks' own top layers (model/adapters/)."""
        super().__init__()
        self.encoder = encoder
        self.objective_heads = nn.ModuleDict(objective_heads or {})
        self.tasks = list(heads)
        self.heads = nn.ModuleDict({t: build_head(TASKS[t], heads[t], encoder) for t in heads})
        for t in self.tasks:
            if heads[t].threshold:
                # The logit above which the task predicts 1; set by calibration on held-out
                # training rows (trainer.py), saved with the weights.
                self.heads[t].register_buffer("threshold", torch.zeros(()))
        self.normalise = {t: heads[t].normalise for t in self.tasks}
        self.adapters = nn.ModuleDict()  # modules an adapter owns beside the layers it wraps
        self.adapter = install_adapter(self, adapter) if adapter is not None else None

    def running(self, task: str | None):
        """The context of a forward of ``task`` (None: no task): what per-task adapters read."""
        return nullcontext() if self.adapter is None else self.adapter.task(task)

    def forward(self, task: str, batch: Batch) -> Tensor:
        if task not in self.heads:
            raise KeyError(f"this model has no head for task {task!r}; it has {self.tasks}")
        with self.running(task):
            return self.heads[task](self.encoder, batch)

    def set_attention(self, impl: AttentionImpl) -> None:
        """Switch the encoder and the heads' own top layers between ``sdpa`` and ``manual``."""
        set_attention(self, impl)

    def forward_embedded(self, task: str, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """A bi-encoded pair task's outputs and sentence embeddings (u, v), each (B, H)."""
        head = self.heads[task]
        if not isinstance(head, BiEncoderHead):
            raise TypeError(f"task {task!r} is not bi-encoded: its head has no sentence embeddings")
        with self.running(task):
            return head.forward_embedded(self.encoder, batch)

    def embeds_sentences(self, task: str) -> bool:
        """True when ``task``'s head pools one sentence at a time (a single-sentence task or
        a bi-encoded pair task), so a sentence has an embedding of its own."""
        return not TASKS[task].is_pair or isinstance(self.heads[task], BiEncoderHead)

    def embed(self, task: str, segment: Segment) -> Tensor:
        """Sentence vectors (B, H') as ``task``'s head pools them (its own layers included)."""
        if not self.embeds_sentences(task):
            raise TypeError(f"task {task!r} encodes its pairs together: no sentence embeddings")
        with self.running(task):
            return self.heads[task].embed(self.encoder, segment)

    def threshold(self, task: str) -> Tensor | None:
        """A calibrated binary task's decision threshold on its logit (None: 0, p = 0.5)."""
        return getattr(self.heads[task], "threshold", None)

    def training_targets(self, task: str, labels: Tensor) -> Tensor:
        """Labels in the space the head is trained in (scores mapped to [0, 1] if normalised)."""
        spec = TASKS[task]
        if spec.label_kind == "score" and self.normalise[task]:
            low, high = spec.score_range
            return (labels - low) / (high - low)
        return labels

    @torch.no_grad()
    def predictions(self, task: str, outputs: Tensor) -> Tensor:
        """Head outputs -> task predictions: class ids, 0/1, or scores in the label range."""
        spec = TASKS[task]
        if spec.label_kind == "class":
            return outputs.argmax(-1)
        if spec.label_kind == "binary":
            return (outputs > 0).long()
        low, high = spec.score_range
        scores = outputs.float()
        if self.normalise[task]:
            scores = low + scores * (high - low)
        return scores.clamp(low, high)

    @staticmethod
    def is_head_parameter(name: str) -> bool:
        """Parameters trained at ``train.head_lr``: the heads' own (the objectives' too),
        except a task's own copies of encoder layers, which keep the encoder's learning rate."""
        if name.startswith("objective_heads."):
            return True
        return name.startswith("heads.") and ".own_layers." not in name

    def depth_below_top(self, name: str) -> int | None:
        """How many layers below the encoder's top layer a parameter sits: 0 for the top
        layer, ``L`` for the embeddings, a task's own copy of a layer as that layer; None
        for the pooler and the heads (layer-wise LR decay, ``train.layer_lr_decay``)."""
        total = len(self.encoder.encoder.layer)
        parts = name.split(".")
        if name.startswith("encoder.embeddings."):
            return total
        if name.startswith("encoder.encoder.layer."):
            return total - 1 - int(parts[3])
        if name.startswith("heads.") and parts[2] == "own_layers":
            return len(self.heads[parts[1]].own_layers) - 1 - int(parts[3])
        return None

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]
