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
from minbert.data.batching import encode_task
from minbert.data.io import TaskData, is_blank
from minbert.data.tasks import TASKS
from minbert.device import resolve_device, use_bf16
from minbert.errors import UserError
from minbert.eval.evaluate import predict
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.run.model_dir import load_model_dir


class PredictorError(UserError, ValueError):
    """A request the run cannot answer (a task it did not train, the wrong kind of input)."""


class Predictor:
    def __init__(self, model: MultiTaskModel, tokenizer: Tokenizer, config: Config, device):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.bf16 = use_bf16(config.train.precision, self.device)

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto") -> Predictor:
        """A run folder (its ``best/``) or a model directory; ``device`` "auto" takes the
        run's own ``train.device`` setting."""
        model, tokenizer, config = load_model_dir(path)
        return cls(
            model,
            tokenizer,
            config,
            resolve_device(config.train.device if device == "auto" else device),
        )

    @property
    def tasks(self) -> list[str]:
        return list(self.model.tasks)

    def check_task(self, task: str) -> None:
        if task not in self.model.tasks:
            raise PredictorError(
                f"this run did not train task {task!r}; it trained {self.model.tasks}"
            )

    def predict(self, task: str, inputs: Sequence[str] | Sequence[tuple[str, str]]) -> np.ndarray:
        """One prediction per input: a class id (SST, CFIMDB), 0/1 (Quora) or a score (STS).
        Single-sentence tasks take strings, pair tasks (a, b) pairs."""
        self.check_task(task)
        spec = TASKS[task]
        rows = []
        for i, item in enumerate(inputs):
            texts = (item,) if isinstance(item, str) else tuple(item)
            if len(texts) != len(spec.text_columns):
                need = "(sentence1, sentence2) pairs" if spec.is_pair else "single sentences"
                raise PredictorError(f"input {i}: task {task} takes {need}")
            if not all(isinstance(t, str) and not is_blank(t) for t in texts):
                raise PredictorError(f"input {i}: empty text")
            rows.append(texts)
        ids = [str(i) for i in range(len(rows))]
        data = TaskData(task, "input", Path("<api>"), ids, rows, None, [])
        return self.predict_data(data)

    def predict_data(self, data: TaskData) -> np.ndarray:
        """Predictions for every row of a read task file (``read_task_file``), in row order."""
        self.check_task(data.task)
        if not len(data):
            return np.zeros(0)
        encoded = encode_task(
            data,
            self.tokenizer,
            self.config.data.max_length,
            bi_encode=self.config.bi_encoded(data.task),
        )
        batch_size = self.config.train.eval_batch_size
        return predict(self.model, encoded, batch_size, self.device, self.bf16).values
