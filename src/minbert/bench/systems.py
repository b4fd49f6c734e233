"""The two systems under test, built to compute the same function on the same batches.

*minbert*: ``MultiTaskModel`` on the pretrained encoder, every head ``pooling = "pooler"``,
``kind = "linear"``, pairs cross-encoded (``[CLS] a [SEP] b [SEP]``); minbert's own AdamW.

*peer*: transformers' ``BertForSequenceClassification`` (5 labels) for SST, which is dropout
and a linear layer on BERT's pooled [CLS], and, sharing its ``BertModel``, the same dropout +
linear for Quora and STS; ``torch.optim.AdamW``. So the heads are the same head: the
pretrained weights come from the same directory, the head weights are copied from minbert's,
and ``max_output_difference`` checks the outputs agree before anything is timed.

Both systems get the same tensors: minbert's tokenizer encodes each dataset once, the batches
are built once per setup, and a training step is the same code for both (autocast, minbert's
task losses in fp32, backward, clipping to norm 1, optimiser step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from minbert.bench.measure import ModelShape, inference_flops, training_flops
from minbert.config import Config, config_from_dict
from minbert.data.batching import Batch, EncodedTask, Segment, TaskStream, encode_task, eval_batches
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.device import autocast
from minbert.errors import UserError
from minbert.model.bert import packed_rows
from minbert.model.loading import load_pretrained, resolve_model_dir
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.objectives.task import task_loss
from minbert.train.optim import AdamW, parameter_groups

TASK_NAMES = ("sst", "quora", "sts")
HEAD = {
    "pooling": "pooler",
    "kind": "linear",
    "encoding": "cross",
}  # = BertForSequenceClassification
LR = 5e-5
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0

TaskBatch = tuple[str, Batch]


class BenchError(UserError, RuntimeError):
    """The benchmark cannot run as asked (no transformers, systems that disagree, ...)."""


@dataclass
class System:
    name: str  # "minbert" or "peer"
    model: nn.Module  # model(task, batch) -> head outputs, as MultiTaskModel
    optimizer: torch.optim.Optimizer
    attention: str  # the attention implementation it runs

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


# -- building -------------------------------------------------------------------------------------


def import_transformers():
    """transformers, quietened: its load report about the new classifier is expected here."""
    try:
        import transformers
    except ImportError as exc:
        raise BenchError(
            "the benchmark compares against `transformers`, a dev dependency: "
            "pip install -e '.[dev]'"
        ) from exc
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def bench_config(model_name: str, attention: str) -> Config:
    return config_from_dict(
        {
            "model": {"name": model_name, "attention": attention},
            "train": {"tasks": list(TASK_NAMES)},
            "heads": {task: dict(HEAD) for task in TASK_NAMES},
        }
    )


def build_minbert(
    model_name: str, attention: str, seed: int, attention_dropout: float | None = None
) -> System:
    encoder, _ = load_pretrained(model_name, attention, attention_dropout=attention_dropout)
    torch.manual_seed(seed)  # the heads' initial weights, copied into the peer
    model = MultiTaskModel(encoder, bench_config(model_name, attention).head_specs()).train()
    optimizer = AdamW(
        parameter_groups(model, WEIGHT_DECAY), lr=LR, weight_decay=WEIGHT_DECAY, compiled=True
    )
    return System("minbert", model, optimizer, attention)


class PeerModel(nn.Module):
    """transformers' BERT with minbert's heads: ``BertForSequenceClassification`` for SST, its
    dropout + a linear layer on the pooled [CLS] for the cross-encoded pair tasks."""

    def __init__(self, sst: nn.Module, pair_heads: dict[str, nn.Linear]):
        super().__init__()
        self.sst = sst
        self.pair_heads = nn.ModuleDict(pair_heads)

    def forward(self, task: str, batch: Batch) -> Tensor:
        ids, mask, types = batch.segments[0].as_tuple()
        if task == "sst":
            return self.sst(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        pooled = self.sst.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        return self.pair_heads[task](self.sst.dropout(pooled.pooler_output)).squeeze(-1)


def build_peer(model_name: str, attention: str | None, minbert: MultiTaskModel) -> System:
    """The peer on the same weights; ``attention=None`` leaves transformers' own default."""
    transformers = import_transformers()
    chosen = {} if attention is None else {"attn_implementation": attention}
    sst = transformers.BertForSequenceClassification.from_pretrained(
        str(resolve_model_dir(model_name)),
        num_labels=TASKS["sst"].num_classes,
        dtype=torch.float32,
        **chosen,
    )
    sst.classifier.load_state_dict(_final_linear(minbert, "sst").state_dict())
    pair_heads = {}
    for task in TASK_NAMES[1:]:
        ours = _final_linear(minbert, task)
        pair_heads[task] = nn.Linear(ours.in_features, ours.out_features)
        pair_heads[task].load_state_dict(ours.state_dict())
    model = PeerModel(sst, pair_heads).train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, WEIGHT_DECAY), lr=LR, weight_decay=WEIGHT_DECAY
    )
    return System("peer", model, optimizer, sst.config._attn_implementation)


def _final_linear(model: MultiTaskModel, task: str) -> nn.Linear:
    return model.heads[task].classifier[-1]


def minbert_attention_like(peer_attention: str) -> str:
    """minbert's implementation matching transformers': its eager path is our manual one."""
    return "manual" if peer_attention == "eager" else "sdpa"


@torch.no_grad()
def max_output_difference(
    a: System, b: System, batches: list[TaskBatch], device: torch.device
) -> float:
    """Largest |output difference| of the two systems on ``batches`` (eval mode, fp32)."""
    a.model.eval()
    b.model.eval()
    worst = 0.0
    for task, batch in batches:
        on_device = batch.to(device)
        diff = a.model(task, on_device).float() - b.model(task, on_device).float()
        worst = max(worst, diff.abs().max().item())
    a.model.train()
    b.model.train()
    return worst


# -- data and batches -----------------------------------------------------------------------------


@dataclass
class BenchData:
    train: dict[str, EncodedTask]
    dev: dict[str, EncodedTask]


def load_bench_data(
    data_dir: str | Path, tokenizer: Tokenizer, max_length: int, train_limit: int, dev_limit: int
) -> BenchData:
    """Read and tokenise each task's train and dev file once (pairs as one sequence)."""

    def encoded(task: str, split: str, limit: int) -> EncodedTask:
        spec = TASKS[task]
        data = read_task_file(Path(data_dir) / spec.files[split], spec, split, limit=limit)
        return encode_task(data, tokenizer, max_length, bi_encode=False)

    return BenchData(
        train={t: encoded(t, "train", train_limit) for t in TASK_NAMES},
        dev={t: encoded(t, "dev", dev_limit) for t in TASK_NAMES},
    )


def training_batches(
    data: dict[str, EncodedTask],
    steps: int,
    batch_size: int,
    group_lengths: bool,
    seed: int,
    targets: MultiTaskModel,
) -> list[TaskBatch]:
    """``steps`` batches, tasks taking turns; labels already in each head's training space.

    Drawn as minbert's trainer draws them (``TaskStream``): shuffled passes, with
    ``group_lengths`` sorted by length inside chunks of 50 batches.
    """
    streams = {task: TaskStream(d, seed, group_lengths) for task, d in data.items()}
    tasks = list(data)
    batches = []
    for step in range(steps):
        task = tasks[step % len(tasks)]
        batch = streams[task].take(batch_size)
        batches.append(
            (task, Batch(batch.segments, targets.training_targets(task, batch.labels), batch.rows))
        )
    return batches


def scoring_batches(
    data: dict[str, EncodedTask], batch_size: int, sort_by_length: bool
) -> list[TaskBatch]:
    """Every dev row once: in file order (what a plain loop does), or sorted by length."""
    batches = []
    for task, d in data.items():
        if sort_by_length:
            row_sets = eval_batches(d.lengths, batch_size)
        else:
            row_sets = [
                np.arange(i, min(i + batch_size, len(d))) for i in range(0, len(d), batch_size)
            ]
        batches.extend((task, d.batch(rows)) for rows in row_sets)
    return batches


def synthetic_batch(batch_size: int, length: int, vocab_size: int, seed: int = 0) -> TaskBatch:
    """An SST batch of ``batch_size`` sequences of exactly ``length`` real tokens (no padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch_size, length), generator=generator)
    segment = Segment(ids, torch.ones_like(ids), torch.zeros_like(ids))
    labels = torch.randint(0, TASKS["sst"].num_classes, (batch_size,), generator=generator)
    return "sst", Batch([segment], labels, np.arange(batch_size))


@dataclass(frozen=True)
class Work:
    """What a list of batches asks of a model."""

    batches: int
    examples: int
    sentences: int  # a pair is two sentences
    real_tokens: int
    padded_tokens: int
    train_flops: float
    infer_flops: float


def count_work(
    batches: list[TaskBatch],
    shape: ModelShape,
    first_token_only: bool = False,
    packed: bool = False,
) -> Work:
    """The work of ``batches``. FLOPs as minbert computes them: ``packed``, per-token work on
    the rows ``Packing`` computes (the real tokens, rounded up by ``packed_rows``);
    ``first_token_only``, for heads that read [CLS] alone (see
    ``inference_flops``)."""
    examples = sentences = real = padded = 0
    train = infer = 0.0
    for task, batch in batches:
        examples += len(batch)
        sentences += len(batch) * len(TASKS[task].text_columns)
        for segment in batch.segments:
            rows, length = segment.input_ids.shape
            segment_real = int(segment.attention_mask.sum())
            real += segment_real
            padded += rows * length
            tokens = packed_rows(segment_real, rows * length) if packed else None
            train += training_flops(shape, rows, length, first_token_only, tokens)
            infer += inference_flops(shape, rows, length, first_token_only, tokens)
    return Work(len(batches), examples, sentences, real, padded, train, infer)


# -- the work timed -------------------------------------------------------------------------------


def train_step(system: System, task: str, batch: Batch, device: torch.device, bf16: bool) -> None:
    """One full optimiser step, as minbert's trainer takes it."""
    batch = batch.to(device)
    with autocast(device, bf16):
        outputs = system.model(task, batch)
    loss = task_loss(TASKS[task], outputs, batch.labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(system.params, MAX_GRAD_NORM)
    system.optimizer.step()
    system.optimizer.zero_grad(set_to_none=True)


def train_run(system: System, batches: list[TaskBatch], device: torch.device, bf16: bool) -> None:
    for task, batch in batches:
        train_step(system, task, batch, device, bf16)


@torch.inference_mode()
def score_run(system: System, batches: list[TaskBatch], device: torch.device, bf16: bool) -> None:
    """Head outputs for every batch, brought back to the CPU as an evaluation does."""
    system.model.eval()
    for task, batch in batches:
        with autocast(device, bf16):
            outputs = system.model(task, batch.to(device))
        outputs.float().cpu()
    system.model.train()
