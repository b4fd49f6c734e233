"""SimCSE (Gao, Yao & Chen 2021): contrastive learning of sentence embeddings.

Unsupervised, the positive of a sentence is the same sentence encoded again (another dropout
mask); supervised, a labelled pair's second sentence, with an optional hard negative per
anchor. Every other positive (and hard negative) of the batch is a negative.

Supervised pairs come from the tasks' **training** splits: Quora duplicates and STS pairs
scored at least ``positive_threshold`` are positives; an anchor's hard negative is, where it
has one, a sentence it forms a Quora non-duplicate or an STS pair scored at most
``negative_threshold`` with (drawn once, seeded). Pooling is ``mean`` (MiniLM's own), or
``cls`` with SimCSE's MLP (dense + tanh) on top in training only; dev scores pool the same
way without the MLP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.data.batching import Batch, EncodedTask, Segment, TaskStream, encode_texts
from minbert.data.io import read_task_file
from minbert.data.sentences import TextConfig, load_sentences
from minbert.data.tasks import TASKS
from minbert.eval.zero_shot import load_sts_pairs, zero_shot_sts
from minbert.model.heads import encode
from minbert.model.tokenizer import Tokenizer
from minbert.objectives.base import Loss, PretrainObjective
from minbert.settings import ConfigError, setting

log = logging.getLogger(__name__)


def simcse_loss(
    anchors: Tensor,
    positives: Tensor,
    temperature: float = 0.05,
    hard_negatives: Tensor | None = None,
    hard_negative_weight: float = 0.0,
    symmetric: bool = False,
    negative_of: Tensor | None = None,
) -> Tensor:
    """Mean over the batch of ``-log softmax`` of each anchor's own positive among the
    batch's positives (and hard negatives), on ``cos / temperature``.

    ``anchors``, ``positives``: (B, H); ``hard_negatives``: (B, H), or (N, H) with
    ``negative_of`` (N,) the anchor each belongs to (not every anchor has one).
    ``hard_negative_weight`` is added to the logit of each anchor's own hard negative alone,
    as SimCSE's code does (0, its default, leaves them as plain negatives). ``symmetric``
    averages in the other direction: each positive picks its anchor among the batch's anchors.
    """
    a = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    logits = a @ p.T / temperature  # (B, B): anchor i against positive j
    targets = torch.arange(len(a), device=a.device)
    if hard_negatives is not None:
        n = F.normalize(hard_negatives.float(), dim=-1)
        against_hard = a @ n.T / temperature  # (B, N): anchor i against hard negative j
        if hard_negative_weight:
            owner = torch.arange(len(n), device=a.device) if negative_of is None else negative_of
            own = F.one_hot(owner, len(a)).T.to(against_hard.dtype)  # (B, N): 1 at its anchor
            against_hard = against_hard + hard_negative_weight * own
        logits = torch.cat([logits, against_hard], dim=1)  # (B, B + N)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = (loss + F.cross_entropy(p @ a.T / temperature, targets)) / 2
    return loss


@dataclass(frozen=True)
class SimCSEConfig(TextConfig):
    tasks: list[str] = setting(
        [],
        "unsup: tasks whose training sentences are text; sup: the pair tasks whose training "
        "pairs give positives and hard negatives (quora, sts)",
    )
    files: list[str] = setting(
        [], "unsup: plain text files, one sentence a line (e.g. wiki/wiki1m_head.txt)"
    )
    max_length: int = setting(32, "tokens per sentence (SimCSE's 32; longer ones are cut)", min=8)
    weight: float = setting(
        0.0,
        "loss weight of SimCSE (0: off). With no train.tasks (minbert pretrain) every step "
        "holds a SimCSE batch; with tasks, a share of the steps",
        min=0.0,
    )
    share: float = setting(
        1.0,
        "with train.tasks: the fraction of optimiser steps that also take a SimCSE batch of "
        "train.batch_size sentences or pairs (spread evenly over each epoch)",
        min=0.0,
        max=1.0,
    )
    mode: Literal["unsup", "sup"] = setting(
        "unsup",
        "unsup: a sentence and itself under another dropout mask; sup: labelled pairs",
    )
    pooling: Literal["mean", "cls"] = setting(
        "mean", "mean of the token states (MiniLM's), or [CLS] with an MLP in training only"
    )
    temperature: float = setting(0.05, "logits are cos / temperature", min=1e-4)
    positive_threshold: float = setting(
        4.0, "sup: STS training pairs scored at least this are positives", min=0.0, max=5.0
    )
    negative_threshold: float = setting(
        1.0,
        "sup: STS training pairs scored at most this give hard negatives",
        min=0.0,
        max=5.0,
    )
    hard_negative_weight: float = setting(
        0.0, "sup: added to the logit of each anchor's own hard negative (SimCSE's, 0)"
    )
    symmetric: bool = setting(
        False, "also the other direction: each positive picks its anchor among the anchors"
    )

    def check(self, key: str) -> None:
        self.check_text(key)
        if self.mode == "sup":
            if self.files:
                raise ConfigError(f"{key}.files: sup reads labelled pairs; text files are unsup")
            usable = [t for t, s in TASKS.items() if s.is_pair and s.label_kind != "class"]
            for task in self.tasks:
                if task not in usable:
                    raise ConfigError(f"{key}.tasks: sup takes pairs of {usable}, not {task!r}")
            if self.negative_threshold >= self.positive_threshold:
                raise ConfigError(f"{key}.negative_threshold: must be below positive_threshold")


class SimCSEHead(nn.Module):
    """SimCSE's MLP over [CLS] in training (dense + tanh); nothing for mean pooling."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.tanh(self.dense(pooled))


def supervised_triples(
    config: SimCSEConfig, data_dir: str | Path, seed: int, on_bad_row: str = "error"
) -> list[tuple[str, str, str | None]]:
    """(anchor, positive, hard negative or None) from the configured tasks' training pairs."""
    positives, against = [], {}  # against: sentence -> the sentences it is a negative pair with
    for task in config.tasks:
        spec = TASKS[task]
        data = read_task_file(Path(data_dir) / spec.files["train"], spec, "train", None, on_bad_row)
        for (a, b), label in zip(data.texts, data.labels, strict=True):
            if spec.label_kind == "binary":
                positive, negative = label > 0.5, label < 0.5
            else:
                positive = label >= config.positive_threshold
                negative = label <= config.negative_threshold
            if positive:
                positives.append((a, b))
            elif negative:
                against.setdefault(a, []).append(b)
                against.setdefault(b, []).append(a)
    rng = np.random.default_rng([seed, *b"simcse-sup"])
    triples = []
    for a, b in positives:
        if a not in against and b in against:
            a, b = b, a  # the sentence that has a hard negative is the anchor
        options = against.get(a)
        triples.append((a, b, options[rng.integers(len(options))] if options else None))
    with_negative = sum(t[2] is not None for t in triples)
    log.info(
        "simcse sup: %d positive pairs from %s, %d with a hard negative",
        len(triples),
        "+".join(config.tasks),
        with_negative,
    )
    if not triples:
        raise ConfigError(
            f"pretrain.simcse: no positive pair in the training files of {config.tasks}"
        )
    return triples


def encode_triples(
    triples: list[tuple[str, str, str | None]], tokenizer: Tokenizer, max_length: int
) -> EncodedTask:
    """Anchor, positive and negative as three parts of one task; ``labels``: 1 where the row
    has a hard negative (its third part is then the negative, else a bare [CLS] [SEP])."""
    texts = [(a, p, n or "") for a, p, n in triples]
    sequences, type_ids, cut = encode_texts(texts, tokenizer, max_length, bi_encode=True)
    return EncodedTask(
        task="simcse",
        split="train",
        ids=[str(i) for i in range(len(texts))],
        sequences=sequences,
        type_ids=type_ids,
        labels=np.array([n is not None for _, _, n in triples], dtype=np.float32),
        truncated=int(cut.sum()),
        texts=texts,
    )


def _rows(segment: Segment, keep: Tensor) -> Segment:
    return Segment(*(t[keep] for t in segment.as_tuple()))


class SimCSEObjective(PretrainObjective):
    name = "simcse"
    Config = SimCSEConfig

    @staticmethod
    def build_head(config: SimCSEConfig, encoder: nn.Module) -> nn.Module | None:
        return SimCSEHead(encoder.config.hidden_size) if config.pooling == "cls" else None

    def __init__(self, run, config: SimCSEConfig, precision, tokenizer: Tokenizer, warmup: int):
        super().__init__(config, precision, warmup)
        seed, group = run.train.seed, run.train.length_grouping
        if config.mode == "sup":
            triples = supervised_triples(config, run.data.dir, seed, run.data.on_bad_row)
            data = encode_triples(triples, tokenizer, config.max_length)
        else:
            data = load_sentences(
                self.name, config, run.data.dir, tokenizer, run.data.on_bad_row, "pretrain.simcse"
            )
        self.stream = TaskStream(data, seed, group, tokenizer.pad_id)

    def prepare(self, batch: Batch) -> Batch:
        return batch.twice() if self.config.mode == "unsup" else batch

    def _embed(self, model: nn.Module, segment: Segment) -> Tensor:
        with self.encoder_context():
            pooled = encode(model.encoder, segment, self.config.pooling)
        if self.config.pooling == "cls":
            with self.precision():
                pooled = model.objective_heads[self.name](pooled)
        return pooled

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        cfg = self.config
        if cfg.mode == "unsup":  # rows 0..B-1 and the same rows again: two dropout masks
            z = self._embed(model, batch.segments[0])
            half = len(z) // 2
            anchors, positives, negatives, owners = z[:half], z[half:], None, None
        else:
            anchors = self._embed(model, batch.segments[0])
            positives = self._embed(model, batch.segments[1])
            has = batch.labels > 0.5
            negatives = owners = None
            if has.any():
                negatives = self._embed(model, _rows(batch.segments[2], has))
                owners = has.nonzero().squeeze(-1)
        value = simcse_loss(
            anchors,
            positives,
            cfg.temperature,
            negatives,
            cfg.hard_negative_weight,
            cfg.symmetric,
            owners,
        )
        return self.weighted(value)


class ZeroShotSTS:
    """The STS dev score of the encoder's own embeddings, after each epoch of a pre-training
    run (``sts_zeroshot_pearson``, ``sts_zeroshot_spearman``)."""

    def __init__(self, data_dir: str | Path, tokenizer: Tokenizer, pooling: str, batch_size: int):
        self.data = load_sts_pairs(data_dir, tokenizer)
        self.pooling, self.batch_size = pooling, batch_size

    def dev_metrics(self, model: nn.Module, device, bf16: bool) -> dict[str, float]:
        return zero_shot_sts(model.encoder, self.data, self.pooling, self.batch_size, device, bf16)
