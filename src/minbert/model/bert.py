"""The BERT encoder, written from scratch.

Module and parameter names follow Hugging Face's ``modeling_bert.py`` exactly
(``embeddings.word_embeddings``, ``encoder.layer.{i}.attention.self.query``, ...), so any HF
BERT checkpoint loads strictly and our weights export back to a directory ``transformers``
reads. Shapes: B = batch, T = sequence length, H = hidden size, N = heads, D = H / N.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.model.dropout import Dropout

AttentionImpl = Literal["sdpa", "manual"]


@dataclass(frozen=True)
class BertConfig:
    """The architecture of a BERT encoder; field names match HF's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; known: {sorted(_ACTIVATIONS)}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        """Read the fields we use from an HF config dict, ignoring the rest."""
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "position_embedding_type": "absolute",
            **asdict(self),
        }


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
}


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, T, H)
    pooler_output: Tensor  # (B, H), tanh(dense(h_[CLS]))


@dataclass
class Packing:
    """Where the real tokens of a padded (B, T) batch sit, so that the per-token work (every
    projection, feed-forward and LayerNorm: all but attention) runs on them alone.

    Packed states are (m, W): the n real tokens in row-major order, then m - n padding
    positions computed as the padded pass computes them, so that m is one of a few row counts
    (``packed_rows``). oneDNN compiles a matmul kernel per shape (about 5 ms each with AMX
    here), and n alone is new almost every batch. Attention pads the states back to (B, T, W)
    for its T x T products. Same results as the padded pass on every real token.

    ``groups``: when the rows' lengths differ widely (a batch in file order), attention runs
    per group of rows of similar length, each padded to its own longest row instead of T
    (``attention_groups``); empty when one group would do.
    """

    batch: int
    length: int
    index: Tensor  # (m,): flat position b * T + t of each computed row, the n real ones first
    real: int  # n
    firsts: Tensor  # (B,): where each sequence's first token sits among the rows
    groups: tuple[AttentionGroup, ...] = ()

    @classmethod
    def of(cls, keep: Tensor, group_attention: bool = True) -> Packing:
        """From the (B, T) bool mask; every sequence's first token must be real."""
        b, t = keep.shape
        flat = keep.reshape(-1)
        index = flat.nonzero().squeeze(1)
        n = len(index)
        extra = packed_rows(n, b * t) - n
        if extra:
            index = torch.cat([index, (~flat).nonzero().squeeze(1)[:extra]])
        groups = attention_groups(keep.sum(1)) if group_attention else ()
        return cls(b, t, index, n, (index[:n] % t == 0).nonzero().squeeze(1), groups)

    def pack(self, padded: Tensor) -> Tensor:
        """(B, T, W) -> (m, W)."""
        return padded.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def pad(self, packed: Tensor, real_only: bool = False) -> Tensor:
        """(m, W) -> (B, T, W); zeros where nothing was computed (``real_only``: on every
        padding position)."""
        index = self.index[: self.real] if real_only else self.index
        flat = packed.new_zeros(self.batch * self.length, packed.shape[-1])
        # in place: the out-of-place index_copy would copy the zeros once more
        return flat.index_copy_(0, index, packed[: len(index)]).view(self.batch, self.length, -1)

    def first(self, packed: Tensor) -> Tensor:
        """(m, W) -> (B, 1, W): each sequence's first token."""
        return packed.index_select(0, self.firsts).unsqueeze(1)


@dataclass(frozen=True)
class AttentionGroup:
    """Rows of a batch that attend together, padded to ``length`` keys."""

    rows: Tensor  # (b,) row numbers in the batch
    length: int


# A row joins the group of the longer rows before it while its length is at least this share
# of the group's longest: at most 1 / 0.75^2 = 1.8x its own T x T attention work.
GROUP_LENGTH_SHARE = 0.75


def attention_groups(lengths: Tensor) -> tuple[AttentionGroup, ...]:
    """The rows sorted by length, longest first, cut into groups whose rows are each at least
    ``GROUP_LENGTH_SHARE`` of their group's longest; () when that is a single group."""
    values, order = lengths.sort(descending=True, stable=True)
    values = values.tolist()
    starts = [0]
    for i, n in enumerate(values):
        if n < GROUP_LENGTH_SHARE * values[starts[-1]]:
            starts.append(i)
    if len(starts) == 1:
        return ()
    ends = [*starts[1:], len(values)]
    return tuple(AttentionGroup(order[s:e], values[s]) for s, e in zip(starts, ends, strict=True))


def packed_rows(real: int, limit: int) -> int:
    """The row count a batch of ``real`` tokens is packed into: rounded up to a multiple of
    64, or of 1/16 of the power of two below it when larger, so at most 1/16 of the rows are
    padding and a training run sees a few dozen distinct shapes; never above ``limit``."""
    step = max(64, (1 << (real.bit_length() - 1)) // 16) if real else 64
    return min(limit, -(-real // step) * step)


def _first_tokens(hidden: Tensor, packing: Packing | None) -> Tensor:
    """(B, 1, H): the first token of each sequence, from padded or packed states."""
    return hidden[:, :1] if packing is None else packing.first(hidden)


class BertEmbeddings(nn.Module):
    """Token + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        # Not persistent: HF checkpoints may or may not carry it, and it is derivable.
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings), persistent=False
        )

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"{self.position_embeddings.num_embeddings}"
            )
        positions = self.position_ids[:seq_len]  # (T,)
        x = (
            self.word_embeddings(input_ids)  # (B, T, H)
            + self.position_embeddings(positions)  # (T, H), broadcast over B
            + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with a padding mask, in two equal implementations.

    ``manual`` writes out scores, softmax and the weighted sum; ``sdpa`` calls
    ``F.scaled_dot_product_attention``, which picks a fused kernel (faster, less memory).
    """

    def __init__(self, config: BertConfig, impl: AttentionImpl = "sdpa"):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.impl: AttentionImpl = impl
        self.stack_projections = True  # off: three matmuls (the benchmark's ablation)
        # on: sdpa in CPU training too, when there is no dropout (the benchmark's ablation)
        self.sdpa_in_cpu_training = False

    def _split_heads(self, x: Tensor, parts: int) -> Tensor:
        """(B, T, parts * H) -> (parts, B, N, T, D)."""
        b, t, _ = x.shape
        return x.view(b, t, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _project(
        self, hidden: Tensor, *linears: nn.Linear, packing: Packing | None = None
    ) -> list[Tensor]:
        """Each of ``linears`` applied to ``hidden`` ((B, T, H), or packed (n, H) with
        ``packing``), split into heads (B, N, T, D).

        Stacked, the projections run as one matmul of their weights concatenated: one wide
        product runs closer to the machine's peak than several narrow ones. The parameters stay
        separate, named as in HF's files.
        """

        def padded(x: Tensor) -> Tensor:
            return x if packing is None else packing.pad(x)

        # A wrapper around nn.Linear (LoRA: base weight plus its own low-rank path) must run
        # its own forward: concatenating .weight would skip it. Only plain layers are stacked.
        plain = all(type(linear) is nn.Linear for linear in linears)
        if not (self.stack_projections and plain):
            return [self._split_heads(padded(linear(hidden)), 1)[0] for linear in linears]
        weight = torch.cat([linear.weight for linear in linears])
        bias = torch.cat([linear.bias for linear in linears])
        return list(self._split_heads(padded(F.linear(hidden, weight, bias)), len(linears)))

    def forward(
        self,
        hidden: Tensor,
        keep: Tensor,
        first_only: bool = False,
        packing: Packing | None = None,
    ) -> Tensor:
        """``keep`` is a bool mask (B, 1, 1, T): True where the key is a real token.

        ``first_only``: attend from the first position alone (the output is (B, 1, H)); keys and
        values still come from every token. With ``packing``, ``hidden`` and the output (unless
        ``first_only``) are packed (n, H).
        """
        if first_only:
            (q,) = self._project(_first_tokens(hidden, packing), self.query)  # (B, N, 1, D)
            k, v = self._project(hidden, self.key, self.value, packing=packing)  # (B, N, T, D)
        else:
            q, k, v = self._project(hidden, self.query, self.key, self.value, packing=packing)
        if packing is not None and packing.groups:
            context = self._attend_grouped(q, k, v, keep, packing.groups)
        else:
            context = self._attend(q, k, v, keep)  # (B, N, T, D)
        b, _, t, _ = context.shape
        context = context.transpose(1, 2).reshape(b, t, -1)  # (B, T, H)
        return context if packing is None or first_only else packing.pack(context)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(D)) v over the keys ``keep`` allows: (B, N, Tq, D)."""
        dropout_p = self.dropout_p if self.training else 0.0
        # CPU training takes the manual math below. With dropout, sdpa has no fused CPU kernel
        # and falls back to the same math with a slower mask; without dropout, its training
        # step was still 1.36-1.47x slower (benchmarks/cpu_training_attention.py).
        cpu_training = self.training and q.device.type == "cpu"
        if self.impl == "sdpa" and (
            not cpu_training or (self.sdpa_in_cpu_training and not dropout_p)
        ):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
        if self.impl in ("sdpa", "manual"):
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, N, Tq, T)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            probs = self.dropout(scores.softmax(dim=-1))  # (B, N, Tq, T)
            return probs @ v
        raise ValueError(f"unknown attention implementation {self.impl!r}")

    def _attend_grouped(
        self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor, groups: tuple[AttentionGroup, ...]
    ) -> Tensor:
        """``_attend`` per group of rows, each on its own first ``length`` keys (and queries,
        unless there is a single query); positions past a group's length get zeros."""
        b, n, tq, d = q.shape
        context = q.new_zeros(b, n, tq, d)
        for group in groups:
            rows, t = group.rows, group.length
            tg = tq if tq == 1 else t
            context[rows, :, :tg] = self._attend(
                q[rows, :, :tg], k[rows, :, :t], v[rows, :, :t], keep[rows, ..., :t]
            )
        return context


class BertSelfOutput(nn.Module):
    """Projection of the attention context, dropout, then add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, context: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig, impl: AttentionImpl = "sdpa"):
        super().__init__()
        self.self = BertSelfAttention(config, impl)
        self.output = BertSelfOutput(config)

    def forward(
        self, hidden: Tensor, keep: Tensor, first_only: bool = False, packing: Packing | None = None
    ) -> Tensor:
        residual = _first_tokens(hidden, packing) if first_only else hidden
        return self.output(self.self(hidden, keep, first_only, packing), residual)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: Tensor) -> Tensor:
        return self.act(self.dense(hidden))  # (B, T, I)


class BertOutput(nn.Module):
    """Down-projection of the feed-forward, dropout, then add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(intermediate)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig, impl: AttentionImpl = "sdpa"):
        super().__init__()
        self.attention = BertAttention(config, impl)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self, hidden: Tensor, keep: Tensor, first_only: bool = False, packing: Packing | None = None
    ) -> Tensor:
        attended = self.attention(hidden, keep, first_only, packing)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig, impl: AttentionImpl = "sdpa"):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, impl) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden: Tensor,
        keep: Tensor,
        first_only: bool = False,
        packing: Packing | None = None,
        top: nn.ModuleList | None = None,
    ) -> Tensor:
        """``first_only``: the last layer computes the first position alone (see BertModel).
        ``packing``: the states are packed real tokens (see Packing). ``top``: layers that
        replace the last ``len(top)`` of this encoder (a task's own layers)."""
        layers = [*self.layer[: len(self.layer) - len(top)], *top] if top else list(self.layer)
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            hidden = layer(hidden, keep, first_only and i == last, packing)
        return hidden


class BertPooler(nn.Module):
    """tanh(dense(hidden state of [CLS]))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


def set_attention(module: nn.Module, impl: AttentionImpl) -> None:
    """Switch every attention layer under ``module`` between ``sdpa`` and ``manual``.

    Walking the modules, not the encoder's layer list, also reaches the copies of top layers
    that a multi-task model's heads own (``heads.<task>.own_layers``)."""
    if impl not in ("sdpa", "manual"):
        raise ValueError(f"unknown attention implementation {impl!r}; use 'sdpa' or 'manual'")
    for layer in module.modules():
        if isinstance(layer, BertSelfAttention):
            layer.impl = impl


class BertModel(nn.Module):
    """The encoder: ``model(input_ids, attention_mask, token_type_ids=None)``."""

    def __init__(self, config: BertConfig, attention: AttentionImpl = "sdpa"):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, attention)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)
        # Heads reading only [CLS] ask for first_token_only (off: the benchmark's ablation).
        self.first_token_shortcut = True
        # Per-token work on real tokens alone when a batch has padding (off: the ablation).
        self.pack_tokens = True
        # With packing, attention per group of similar lengths (``Packing.groups``; off:
        # benchmarks/grouped_attention.py's comparison). Not in training: attention dropout
        # would draw its masks per group, so every training run would follow another random
        # path than the measured ones, for a gain not measured in training yet.
        self.group_attention = True

    def set_attention(self, impl: AttentionImpl) -> None:
        """Switch every layer between the ``sdpa`` and ``manual`` attention paths."""
        set_attention(self, impl)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation, for models trained from scratch (tests, tiny configs).
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        first_token_only: bool = False,
        top: nn.ModuleList | None = None,
    ) -> EncoderOutput:
        """``first_token_only``: return the [CLS] state alone, ``last_hidden_state`` (B, 1, H),
        which is all a ``cls`` or ``pooler`` head reads. The last layer then computes queries,
        attention output and feed-forward for one token instead of T (its keys and values still
        for all): 10 of the 72 H² multiply-adds per token of a 6-layer model, forward and
        backward. The result is the same as the full pass's first row.

        A batch with padding runs packed (``Packing``): every layer's per-token work on its
        real tokens alone (and a few padding positions). Padding positions of ``last_hidden_state``
        are then zeros.

        ``top``: layers run in place of the encoder's last ``len(top)`` ones (a task's own
        top layers, ``heads.<task>.own_layers``)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        real = attention_mask.bool()  # (B, T)
        hidden = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        packing = None
        if self.pack_tokens and not real.all() and real[:, 0].all():
            packing = Packing.of(real, self.group_attention and not self.training)
            hidden = packing.pack(hidden)  # (m, H)
        hidden = self.encoder(hidden, real[:, None, None, :], first_token_only, packing, top)
        if packing is not None and not first_token_only:
            hidden = packing.pad(hidden, real_only=True)
        return EncoderOutput(last_hidden_state=hidden, pooler_output=self.pooler(hidden))
