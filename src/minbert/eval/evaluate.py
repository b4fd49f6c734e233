"""One evaluation loop for every task and split."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from minbert.data.batching import EncodedTask, eval_batches, pad_sequences
from minbert.data.tasks import TASKS
from minbert.device import autocast
from minbert.eval.metrics import METRICS, overall_scores
from minbert.model.heads import BiEncoderHead
from minbert.model.multitask import MultiTaskModel


@dataclass
class Predictions:
    """Per-row predictions (class ids, 0/1 or scores) and the head outputs behind them."""

    values: np.ndarray  # (N,)
    # (N, classes) logits, or (N,) binary logits less the calibrated threshold (if any), or
    # scores in training space
    outputs: np.ndarray


@torch.inference_mode()
def predict(
    model: MultiTaskModel,
    data: EncodedTask,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    progress: bool = False,
    pad_multiple: int = 1,
) -> Predictions:
    """Predictions for every row of ``data``, in row order (each batch padded to a multiple
    of ``pad_multiple`` tokens)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    spec = TASKS[data.task]
    values = np.zeros(len(data), dtype=np.float64)
    width = (spec.num_outputs,) if spec.num_outputs > 1 else ()
    outputs = np.zeros((len(data), *width), dtype=np.float32)
    head = model.heads[data.task]
    if isinstance(head, BiEncoderHead):
        batches = _bi_encoded_outputs(
            model, head, data, batch_size, device, bf16, progress, pad_multiple
        )
    else:
        batches = _outputs(model, data, batch_size, device, bf16, progress, pad_multiple)
    threshold = model.threshold(data.task)
    for rows, out in batches:
        if threshold is not None:
            out = out - threshold  # a calibrated logit: its sign is the prediction
        values[rows] = model.predictions(data.task, out).cpu().numpy()
        outputs[rows] = out.float().cpu().numpy()
    model.train(was_training)
    if spec.label_kind != "score":
        values = values.astype(np.int64)
    return Predictions(values, outputs)


def _outputs(
    model, data, batch_size, device, bf16, progress, pad_multiple
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Head outputs, batch by batch of rows of similar length."""
    batches = eval_batches(data.lengths, batch_size)
    for rows in tqdm(
        batches, desc=f"eval {data.task} {data.split}", leave=False, disable=not progress
    ):
        with autocast(device, bf16):
            out = model(data.task, data.batch(rows, multiple=pad_multiple).to(device))
        yield rows, out


def _bi_encoded_outputs(
    model, head, data, batch_size, device, bf16, progress, pad_multiple
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Head outputs of a bi-encoded pair task, encoding each distinct sentence once.

    Dev and test files repeat sentences across pairs; a sentence's embedding does not depend
    on its pair, so each is computed once and the head compares the looked-up pairs.
    """
    distinct, where = data.distinct_sentences()
    table = None  # (distinct sentences, H)
    for rows in tqdm(
        eval_batches(np.array([len(ids) for ids in distinct]), batch_size),
        desc=f"eval {data.task} {data.split}",
        leave=False,
        disable=not progress,
    ):
        ids = [distinct[i] for i in rows]
        segment = pad_sequences(ids, [np.zeros_like(x) for x in ids], 0, pad_multiple)
        segment = segment.to(device)
        with autocast(device, bf16):
            pooled = model.embed(data.task, segment)  # in the task's adapter context
        if table is None:
            table = pooled.new_empty(len(distinct), pooled.shape[-1])
        table[torch.from_numpy(rows).to(device)] = pooled
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data)))
        u, v = (table[torch.from_numpy(where[p, rows]).to(device)] for p in (0, 1))
        with autocast(device, bf16):
            out = head.compare(u, v)
        yield rows, out


def score(task: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    return METRICS[TASKS[task].metric](predictions, labels)


def evaluate(
    model: MultiTaskModel,
    datasets: dict[str, EncodedTask],
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, Predictions]]:
    """Metrics (``<task>_<metric>`` plus both overall forms) and predictions of each dataset."""
    metrics: dict[str, float] = {}
    per_task: dict[str, float] = {}
    predictions = {}
    for task, data in datasets.items():
        predictions[task] = predict(model, data, batch_size, device, bf16, progress)
        if data.labels is not None:
            value = score(task, predictions[task].values, data.labels)
            per_task[task] = value
            metrics[f"{task}_{TASKS[task].metric}"] = value
    metrics.update(overall_scores(per_task, {t: TASKS[t].metric for t in per_task}))
    return metrics, predictions
