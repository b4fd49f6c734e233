"""Tokenise once, then pad and batch, grouping similar lengths to keep padding small.

An ``EncodedTask`` holds every row of one split already tokenised: one sequence per row for
single sentences and cross-encoded pairs, two for bi-encoded pairs. ``TaskStream`` serves
training batches of any size from endless shuffled passes over it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from minbert.data.io import TaskData
from minbert.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """A padded batch of sequences."""

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T), 1 for real tokens
    token_type_ids: Tensor  # (B, T)

    def to(self, device: torch.device | str) -> Segment:
        return Segment(*(t.to(device, non_blocking=True) for t in self.as_tuple()))

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.input_ids, self.attention_mask, self.token_type_ids


@dataclass
class Batch:
    segments: list[Segment]  # [cross-encoded or single] or [sentence a, sentence b]
    labels: Tensor | None  # (B,)
    rows: np.ndarray  # indices of these examples in their EncodedTask

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return Batch([s.to(device) for s in self.segments], labels, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def twice(self) -> Batch:
        """Every row twice: rows 0..B-1, then the same rows again (R-Drop's two passes)."""
        segments = [Segment(*(t.repeat(2, 1) for t in s.as_tuple())) for s in self.segments]
        labels = None if self.labels is None else self.labels.repeat(2)
        return Batch(segments, labels, np.concatenate([self.rows, self.rows]))


@dataclass
class EncodedTask:
    task: str
    split: str
    ids: list[str]
    sequences: list[list[np.ndarray]]  # sequences[part][row] -> token ids
    type_ids: list[list[np.ndarray]]  # same layout, segment ids
    labels: np.ndarray | None
    truncated: int  # rows with at least one sequence cut to max_length
    texts: list[tuple[str, ...]] | None = None  # each row's texts, as read (augmentation)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Longest part of each row: what its batch will be padded to."""
        return np.max([[len(s) for s in part] for part in self.sequences], axis=0)

    def subset(self, rows: np.ndarray, split: str) -> EncodedTask:
        """The given rows (in that order) as a task of their own, named ``split``."""
        rows = np.asarray(rows, dtype=np.int64)
        return EncodedTask(
            task=self.task,
            split=split,
            ids=[self.ids[r] for r in rows],
            sequences=[[part[r] for r in rows] for part in self.sequences],
            type_ids=[[part[r] for r in rows] for part in self.type_ids],
            labels=None if self.labels is None else self.labels[rows],
            truncated=self.truncated,
            texts=None if self.texts is None else [self.texts[r] for r in rows],
        )

    def distinct_sentences(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Each distinct sentence (token ids) of a bi-encoded pair task once, and where each
        row's parts are among them: (distinct, where) with ``where[part, row]`` an index.
        Dev and test files repeat sentences across pairs, and a sentence's embedding does not
        depend on its pair."""
        index: dict[bytes, int] = {}  # token ids -> position among the distinct sentences
        distinct: list[np.ndarray] = []
        where = np.zeros((len(self.sequences), len(self)), dtype=np.int64)  # (2, N)
        for p, part in enumerate(self.sequences):
            for row, ids in enumerate(part):
                key = ids.tobytes()
                if key not in index:
                    index[key] = len(distinct)
                    distinct.append(ids)
                where[p, row] = index[key]
        return distinct, where

    def batch(self, rows: np.ndarray, pad_id: int = 0, multiple: int = 1) -> Batch:
        segments = [
            pad_sequences([ids[r] for r in rows], [types[r] for r in rows], pad_id, multiple)
            for ids, types in zip(self.sequences, self.type_ids, strict=True)
        ]
        labels = None if self.labels is None else torch.from_numpy(self.labels[rows])
        return Batch(segments, labels, rows)


def hold_out(
    data: EncodedTask, fraction: float, seed: int, most: int = 0
) -> tuple[EncodedTask, EncodedTask]:
    """A seeded random ``fraction`` of the rows (at most ``most``, if set) split off (as
    split ``heldout``) from the rest, each part in file order."""
    rng = np.random.default_rng([seed, *data.task.encode(), *b"heldout"])
    count = min(len(data) - 1, max(1, round(fraction * len(data))))
    count = min(count, most) if most else count
    held = np.sort(rng.permutation(len(data))[:count])
    kept = np.setdiff1d(np.arange(len(data)), held)
    return data.subset(kept, data.split), data.subset(held, "heldout")


def random_share(data: EncodedTask, fraction: float, seed: int) -> EncodedTask:
    """A seeded random ``fraction`` of the rows (at least one), in file order."""
    rng = np.random.default_rng([seed, *data.task.encode(), *b"share"])
    count = max(1, round(fraction * len(data)))
    return data.subset(np.sort(rng.permutation(len(data))[:count]), data.split)


def encode_task(
    data: TaskData, tokenizer: Tokenizer, max_length: int, bi_encode: bool
) -> EncodedTask:
    """Tokenise every row of ``data`` once. Pairs are one sequence unless ``bi_encode``."""
    sequences, type_ids, cut = encode_texts(data.texts, tokenizer, max_length, bi_encode)
    truncated = int(cut.sum())
    if truncated:
        log.info(
            "%s %s: %d of %d rows truncated to %d tokens",
            data.task,
            data.split,
            truncated,
            len(data),
            max_length,
        )
    return EncodedTask(
        task=data.task,
        split=data.split,
        ids=data.ids,
        sequences=sequences,
        type_ids=type_ids,
        labels=data.labels,
        truncated=truncated,
        texts=data.texts,
    )


def encode_texts(
    texts: list[tuple[str, ...]], tokenizer: Tokenizer, max_length: int, bi_encode: bool
) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]], np.ndarray]:
    """Rows of texts as ``EncodedTask`` holds them: (sequences, type_ids, truncated), the
    last a bool per row (a sequence of it was cut to ``max_length``)."""
    columns = list(zip(*texts, strict=True))
    if len(columns) == 1 or not bi_encode:
        pair = list(columns[1]) if len(columns) == 2 else None
        parts = [tokenizer.encode_batch(list(columns[0]), pair, max_length)]
    else:
        parts = [tokenizer.encode_batch(list(col), None, max_length) for col in columns]
    truncated = np.any([[e.truncated for e in part] for part in parts], axis=0)
    sequences = [[np.asarray(e.input_ids, dtype=np.int64) for e in part] for part in parts]
    type_ids = [[np.asarray(e.token_type_ids, dtype=np.int64) for e in part] for part in parts]
    return sequences, type_ids, truncated


def pad_sequences(
    ids: list[np.ndarray], types: list[np.ndarray], pad_id: int = 0, multiple: int = 1
) -> Segment:
    """One padded batch, as long as its longest sequence rounded up to ``multiple`` (a
    server pads to few distinct lengths, so oneDNN caches few kernels)."""
    longest = -(-max(len(x) for x in ids) // multiple) * multiple
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    token_types = np.zeros((len(ids), longest), dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for i, (x, t) in enumerate(zip(ids, types, strict=True)):
        input_ids[i, : len(x)] = x
        token_types[i, : len(t)] = t
        mask[i, : len(x)] = 1
    return Segment(
        torch.from_numpy(input_ids), torch.from_numpy(mask), torch.from_numpy(token_types)
    )


def grouped_order(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group: bool = True,
    chunk: int = 50,
) -> np.ndarray:
    """A shuffled order of rows whose consecutive ``batch_size`` slices have similar lengths.

    Rows are shuffled, cut into chunks of ``chunk`` batches, sorted by length inside each
    chunk, split into batches, and the batches shuffled: padding stays small while every
    batch is still a random draw.
    """
    order = rng.permutation(len(lengths))
    if not group:
        return order
    span = batch_size * chunk
    batches = []
    for start in range(0, len(order), span):
        piece = order[start : start + span]
        piece = piece[np.argsort(lengths[piece], kind="stable")]
        batches.extend(piece[i : i + batch_size] for i in range(0, len(piece), batch_size))
    # Only the very last batch can be short; it stays last so that slices of batch_size
    # taken from the order line up with the batches.
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    return np.concatenate(shuffled + tail)


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches for evaluation, sorted by length (least padding)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class TaskStream:
    """Endless shuffled passes over one task's training rows, served in batches of any size.

    A batch never spans two passes: the last batch of a pass may be smaller. Each task has
    its own generator, so adding a task doesn't change another task's batches.
    """

    def __init__(self, data: EncodedTask, seed: int, group_lengths: bool = True, pad_id: int = 0):
        self.data = data
        self.rng = np.random.default_rng([seed, *data.task.encode()])
        self.group_lengths = group_lengths
        self.pad_id = pad_id
        self.lengths = data.lengths
        self.order = np.empty(0, dtype=np.int64)
        self.position = 0
        self.passes = 0

    def __len__(self) -> int:
        """Rows in one pass (an epoch's worth)."""
        return len(self.lengths)

    def take(self, batch_size: int) -> Batch:
        return self.batch(self.take_rows(batch_size))

    def take_rows(self, batch_size: int) -> np.ndarray:
        """The next batch's row indices (a step may split them into micro-batches)."""
        if self.position >= len(self.order):
            self.order = grouped_order(self.lengths, batch_size, self.rng, self.group_lengths)
            self.position = 0
            self.passes += 1
        rows = self.order[self.position : self.position + batch_size]
        self.position += len(rows)
        return rows

    def batch(self, rows: np.ndarray) -> Batch:
        return self.data.batch(rows, self.pad_id)

    def state_dict(self) -> dict:
        """Position in the current pass and the generator, for an exact resume."""
        return {
            "order": self.order,
            "position": self.position,
            "passes": self.passes,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.order = np.asarray(state["order"], dtype=np.int64)
        self.position = int(state["position"])
        self.passes = int(state["passes"])
        self.rng.bit_generator.state = state["rng"]
