"""Predictions from a trained run, for the CLI, the Python API and the HTTP server:

predictor = Predictor.from_run("runs/demo")
predictor.predict("sst", ["A gorgeous, moving film."])         # -> array([4])
predictor.predict("sts", [("A man plays.", "A man is playing.")])  # -> array([4.1...])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from minbert.config import Config
from minbert.data.batching import encode_task, eval_batches, pad_sequences
from minbert.data.io import TaskData, is_blank
from minbert.data.tasks import TASKS
from minbert.device import autocast, resolve_device, use_bf16
from minbert.errors import UserError
from minbert.eval.evaluate import Predictions, predict
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.run.model_dir import load_model_dir


class PredictorError(UserError, ValueError):
    """A request the run cannot answer (a task it did not train, the wrong kind of input)."""


class TaskPredictor:
    """What every backend (PyTorch here, ONNX Runtime in ``minbert.onnx``) shares: the
    checks and forms of a request. A backend gives ``backend`` (its name), ``tasks``,
    ``tokenizer``, ``config``, ``parameters``, ``threshold(task)``, ``outputs_data(data)``,
    ``embeds_sentences(task)`` and ``sentence_vectors(task, ids)``."""

    def check_task(self, task: str) -> None:
        input_rows(task, [], self.tasks)

    def predict(self, task: str, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> np.ndarray:
        """One prediction per input: a class id (SST, CFIMDB), 0/1 (Quora) or a score (STS).
        Single-sentence tasks take strings, pair tasks (a, b) pairs."""
        return self.outputs(task, inputs).values

    def outputs(self, task: str, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> Predictions:
        """The predictions and the head outputs behind them (logits; a binary logit less its
        calibrated threshold; a score in training space), as ``eval.evaluate.predict``."""
        return self.outputs_data(input_rows(task, inputs, self.tasks))

    def predict_data(self, data: TaskData) -> np.ndarray:
        """Predictions for every row of a read task file (``read_task_file``), in row order."""
        return self.outputs_data(data).values

    def embed(self, task: str, texts: Sequence[str]) -> np.ndarray:
        """Sentence vectors (N, H') as ``task``'s head pools them: the vectors a bi-encoded
        task compares, or those a single-sentence task classifies."""
        self.check_task(task)
        if not self.embeds_sentences(task):
            raise PredictorError(
                f"task {task} encodes its two sentences together: a sentence has no embedding "
                "of its own there"
            )
        rows = input_rows(task, [(t,) for t in texts], self.tasks, single=True).texts
        encoded = self.tokenizer.encode_batch(
            [r[0] for r in rows], None, self.config.data.max_length
        )
        return self.sentence_vectors(
            task, [np.asarray(e.input_ids, dtype=np.int64) for e in encoded]
        )


class Predictor(TaskPredictor):
    def __init__(
        self,
        model: MultiTaskModel,
        tokenizer: Tokenizer,
        config: Config,
        device,
        pad_multiple: int = 1,
    ):
        """``pad_multiple``: pad each batch to a multiple of this many tokens (a server
        sees every length; few distinct shapes keep oneDNN's kernel cache, and memory,
        small)."""
        self.pad_multiple = pad_multiple
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.bf16 = use_bf16(config.train.precision, self.device)

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto", pad_multiple: int = 1) -> Predictor:
        """A run folder (its ``best/``) or a model directory; ``device`` "auto" takes the
        run's own ``train.device`` setting."""
        model, tokenizer, config = load_model_dir(path)
        device = resolve_device(config.train.device if device == "auto" else device)
        return cls(model, tokenizer, config, device, pad_multiple)

    @property
    def tasks(self) -> list[str]:
        return list(self.model.tasks)

    def outputs_data(self, data: TaskData) -> Predictions:
        self.check_task(data.task)
        if not len(data):
            return Predictions(np.zeros(0), np.zeros(0, dtype=np.float32))
        encoded = encode_task(
            data,
            self.tokenizer,
            self.config.data.max_length,
            bi_encode=self.config.bi_encoded(data.task),
        )
        batch_size = self.config.train.eval_batch_size
        return predict(
            self.model, encoded, batch_size, self.device, self.bf16, pad_multiple=self.pad_multiple
        )

    backend = "torch"

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def threshold(self, task: str) -> float:
        """A calibrated binary task's decision threshold on its logit (0 when none)."""
        threshold = self.model.threshold(task)
        return 0.0 if threshold is None else float(threshold)

    def embeds_sentences(self, task: str) -> bool:
        return self.model.embeds_sentences(task)

    @torch.inference_mode()
    def sentence_vectors(self, task: str, ids: list[np.ndarray]) -> np.ndarray:
        """The head's pooled vectors of these token ids, batched by length."""
        out = np.zeros((len(ids), 0), dtype=np.float32)
        for batch in eval_batches(
            np.array([len(x) for x in ids]), self.config.train.eval_batch_size
        ):
            segment = pad_sequences(
                [ids[i] for i in batch],
                [np.zeros_like(ids[i]) for i in batch],
                0,
                self.pad_multiple,
            )
            with autocast(self.device, self.bf16):
                vectors = self.model.embed(task, segment.to(self.device)).float().cpu().numpy()
            if not out.shape[1]:
                out = np.zeros((len(ids), vectors.shape[1]), dtype=np.float32)
            out[batch] = vectors
        return out


def input_rows(task: str, inputs: Sequence, trained: list[str], single: bool = False) -> TaskData:
    """``inputs`` checked as rows of ``task`` (strings, or (a, b) pairs for pair tasks;
    ``single``: one sentence each whatever the task), as a ``TaskData`` without labels."""
    if task not in trained:
        raise PredictorError(f"this run did not train task {task!r}; it trained {trained}")
    spec = TASKS[task]
    width = 1 if single else len(spec.text_columns)
    rows = []
    for i, item in enumerate(inputs):
        texts = (item,) if isinstance(item, str) else tuple(item)
        if len(texts) != width:
            need = "(sentence1, sentence2) pairs" if width == 2 else "single sentences"
            raise PredictorError(f"input {i}: task {task} takes {need}")
        if not all(isinstance(t, str) and not is_blank(t) for t in texts):
            raise PredictorError(f"input {i}: empty text")
        rows.append(texts)
    ids = [str(i) for i in range(len(rows))]
    return TaskData(task, "input", Path("<api>"), ids, rows, None, [])
