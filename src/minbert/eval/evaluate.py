"""One evaluation loop for every task and split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.data.batching import EncodedTask, eval_batches
from minbert.data.tasks import TASKS
from minbert.eval.metrics import METRICS, overall_scores
from minbert.model.multitask import MultiTaskModel
from minbert.train.device import autocast


@dataclass
class Predictions:
    """Per-row predictions (class ids, 0/1 or scores) and the raw head outputs behind them."""

    values: np.ndarray  # (N,)
    outputs: np.ndarray  # (N, classes) logits, or (N,) binary logits / scores in training space


@torch.inference_mode()
def predict(
    model: MultiTaskModel,
    data: EncodedTask,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    progress: bool = False,
) -> Predictions:
    """Predictions for every row of ``data``, in row order."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    spec = TASKS[data.task]
    values = np.zeros(len(data), dtype=np.float64)
    width = (spec.num_outputs,) if spec.num_outputs > 1 else ()
    outputs = np.zeros((len(data), *width), dtype=np.float32)
    batches = eval_batches(data.lengths, batch_size)
    for rows in tqdm(
        batches, desc=f"eval {data.task} {data.split}", leave=False, disable=not progress
    ):
        batch = data.batch(rows).to(device)
        with autocast(device, bf16):
            out = model(data.task, batch)
        values[rows] = model.predictions(data.task, out).cpu().numpy()
        outputs[rows] = out.float().cpu().numpy()
    model.train(was_training)
    if spec.label_kind != "score":
        values = values.astype(np.int64)
    return Predictions(values, outputs)


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
