"""Pooling and task heads. A head decides how its task is encoded (single, cross or bi).

Every head is called as ``head(encoder, batch) -> Tensor`` of shape (B, num_outputs) or (B,):
class logits, a binary logit, or a score in the model's training space.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.data.batching import Batch, Segment
from minbert.data.tasks import TaskSpec
from minbert.model.bert import BertModel
from minbert.model.dropout import Dropout
from minbert.settings import ConfigError

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class HeadSpec:
    """What the model needs to know of a task's head (the config's ``heads.<task>`` table,
    validated there, says the same and more)."""

    pooling: str = "cls"
    kind: str = "linear"
    hidden: list[int] = field(default_factory=lambda: [256])
    activation: str = "gelu"
    dropout: float = 0.1
    encoding: str = "cross"
    features: str = "uvdp"
    swap: bool = False
    own_layers: int = 0
    normalise: bool = True  # scores trained in [0, 1] (always for a cosine head)
    threshold: bool = False  # a calibrated decision threshold, saved with the weights


def pool(hidden: Tensor, mask: Tensor, pooler_output: Tensor, how: str) -> Tensor:
    """One vector per sequence from token states (B, T, H) and the padding mask (B, T)."""
    if how == "cls":
        return hidden[:, 0]  # (B, H)
    if how == "pooler":
        return pooler_output  # (B, H)
    keep = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    mean = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, H)
    if how == "mean":
        return mean
    most = hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)  # (B, H)
    if how == "max":
        return most
    if how == "mean+max":
        return torch.cat([mean, most], dim=-1)  # (B, 2H)
    raise ValueError(f"unknown pooling {how!r}")


def pooled_size(hidden_size: int, how: str) -> int:
    return 2 * hidden_size if how == "mean+max" else hidden_size


def classifier(in_dim: int, out_dim: int, head: HeadSpec) -> nn.Sequential:
    """``linear``: dropout + linear. ``mlp``: (dropout, linear, activation) per hidden size, then linear."""
    layers: list[nn.Module] = []
    width = in_dim
    if head.kind == "mlp":
        for size in head.hidden:
            layers += [
                Dropout(head.dropout),
                nn.Linear(width, size),
                _ACTIVATIONS[head.activation](),
            ]
            width = size
    layers += [Dropout(head.dropout), nn.Linear(width, out_dim)]
    return nn.Sequential(*layers)


def encode(
    encoder: BertModel, segment: Segment, how: str, top: nn.ModuleList | None = None
) -> Tensor:
    """Pooled vectors (B, H') of a segment; ``top``: the task's own top layers, if any."""
    # cls and pooler read the [CLS] state alone: the encoder's last layer can skip the rest.
    first_only = encoder.first_token_shortcut and how in ("cls", "pooler")
    out = encoder(*segment.as_tuple(), first_token_only=first_only, top=top)
    return pool(out.last_hidden_state, segment.attention_mask, out.pooler_output, how)


def own_layers(encoder: BertModel, count: int, task: str) -> nn.ModuleList | None:
    """Copies of the encoder's top ``count`` layers, for one task alone (None when 0).

    The copies start from the shared layers' current (pretrained) weights, so the task's
    path through the model is the pretrained encoder at the start; from then on only that
    task's loss trains them, and the other tasks' gradients never reach them."""
    total = len(encoder.encoder.layer)
    if count > total:
        raise ConfigError(
            f"heads.{task}.own_layers: {count} is more than the encoder's {total} layers"
        )
    if not count:
        return None
    return nn.ModuleList(copy.deepcopy(layer) for layer in encoder.encoder.layer[total - count :])


PAIR_FEATURE_WIDTH = {"uv": 2, "uvd": 3, "uvdp": 4, "uvdpc": 4}  # in units of H (+1 for c)


def pair_features(u: Tensor, v: Tensor, features: str) -> Tensor:
    parts = [u, v]
    if features in ("uvd", "uvdp", "uvdpc"):
        parts.append((u - v).abs())
    if features in ("uvdp", "uvdpc"):
        parts.append(u * v)
    if features == "uvdpc":
        # The score MiniLM was pre-trained to produce, handed to the head as it is.
        cos = F.cosine_similarity(u.float(), v.float(), dim=-1)  # (B,)
        parts.append(cos.to(u.dtype).unsqueeze(-1))  # (B, 1)
    return torch.cat(parts, dim=-1)  # (B, k*H [+ 1])


def pair_features_size(width: int, features: str) -> int:
    return PAIR_FEATURE_WIDTH[features] * width + (features == "uvdpc")


class SequenceHead(nn.Module):
    """One sequence per example: a single sentence, or a cross-encoded pair."""

    def __init__(self, spec: TaskSpec, head: HeadSpec, encoder: BertModel):
        super().__init__()
        self.pooling = head.pooling
        self.own_layers = own_layers(encoder, head.own_layers, spec.name)
        width = pooled_size(encoder.config.hidden_size, head.pooling)
        self.classifier = classifier(width, spec.num_outputs, head)
        self.squeeze = spec.num_outputs == 1

    def embed(self, encoder: BertModel, segment: Segment) -> Tensor:
        """The pooled vectors (B, H') the classifier reads."""
        return encode(encoder, segment, self.pooling, self.own_layers)

    def forward(self, encoder: BertModel, batch: Batch) -> Tensor:
        (segment,) = batch.segments
        out = self.classifier(self.embed(encoder, segment))
        return out.squeeze(-1) if self.squeeze else out


class BiEncoderHead(nn.Module):
    """Each sentence encoded alone (siamese), then features or cosine similarity.

    Both sentences go through the encoder in one call (one batch of 2B sequences). With
    ``swap`` each training pair is presented in a random order. With
    ``kind = "cosine"`` the output is cos(u, v): a score in [-1, 1] for regression (trained
    against labels mapped to [0, 1]), or for binary tasks a logit ``scale * cos + bias`` with
    learned scale and bias.
    """

    def __init__(self, spec: TaskSpec, head: HeadSpec, encoder: BertModel):
        super().__init__()
        self.pooling = head.pooling
        self.kind = head.kind
        self.features = head.features
        self.swap = head.swap
        self.own_layers = own_layers(encoder, head.own_layers, spec.name)
        width = pooled_size(encoder.config.hidden_size, head.pooling)
        if head.kind == "cosine":
            self.binary = spec.label_kind == "binary"
            if self.binary:
                self.scale = nn.Parameter(torch.tensor(10.0))
                self.bias = nn.Parameter(torch.tensor(-5.0))
        else:
            size = pair_features_size(width, head.features)
            self.classifier = classifier(size, spec.num_outputs, head)

    def embed_pair(self, encoder: BertModel, batch: Batch) -> tuple[Tensor, Tensor]:
        a, b = batch.segments
        width = max(a.input_ids.shape[1], b.input_ids.shape[1])
        both = Segment(
            *(
                torch.cat([_pad_to(x, width), _pad_to(y, width)])
                for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True)
            )
        )
        return self.embed(encoder, both).chunk(2)  # 2 x (B, H)

    def embed(self, encoder: BertModel, segment: Segment) -> Tensor:
        """Sentence embeddings (B, H) of single sentences, as this head pools them."""
        return encode(encoder, segment, self.pooling, self.own_layers)

    def forward(self, encoder: BertModel, batch: Batch) -> Tensor:
        return self.compare(*self.embed_pair(encoder, batch))

    def forward_embedded(self, encoder: BertModel, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """The outputs and the two sentence embeddings (B, H) they came from."""
        u, v = self.embed_pair(encoder, batch)
        return self.compare(u, v), u, v

    def compare(self, u: Tensor, v: Tensor) -> Tensor:
        """The head's output from the two sentence embeddings (B, H) of each pair."""
        if self.swap and self.training:
            # [u;v] is ordered but paraphrase and similarity are not: show both orders.
            flip = (torch.rand(u.shape[0], device=u.device) < 0.5).unsqueeze(-1)  # (B, 1)
            u, v = torch.where(flip, v, u), torch.where(flip, u, v)
        if self.kind == "cosine":
            cos = F.cosine_similarity(u.float(), v.float(), dim=-1)  # (B,)
            return self.scale * cos + self.bias if self.binary else cos
        return self.classifier(pair_features(u, v, self.features)).squeeze(-1)


def _pad_to(x: Tensor, width: int) -> Tensor:
    return F.pad(x, (0, width - x.shape[1]))  # pads with 0: [PAD], mask 0, segment 0


def build_head(spec: TaskSpec, head: HeadSpec, encoder: BertModel) -> nn.Module:
    """The task's head; ``heads.<task>.own_layers`` copies the encoder's top layers as they
    are now, so build heads after loading the pretrained weights."""
    if spec.is_pair and head.encoding == "bi":
        return BiEncoderHead(spec, head, encoder)
    return SequenceHead(spec, head, encoder)
