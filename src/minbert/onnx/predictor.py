"""Predictions from an ONNX export (``export_onnx``) with ONNX Runtime on CPU, with the
public surface of ``eval.predictor.Predictor``:

predictor = OnnxPredictor.from_dir("exports/demo", threads=2)
predictor.predict("sst", ["A gorgeous, moving film."])         # -> array([4])
predictor.outputs("quora", [("How do I cook?", "How to cook?")])  # values and logits

Inputs are checked, tokenised, batched (rows of similar length together, the run's
``train.eval_batch_size``) and turned into predictions as the PyTorch path does it
(``eval.evaluate.predict``); bi-encoded pair tasks encode each distinct sentence once, then
compare the pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minbert.config import Config, load_config
from minbert.data.batching import EncodedTask, encode_task, eval_batches, pad_sequences
from minbert.data.io import TaskData
from minbert.data.tasks import TASKS
from minbert.errors import UserError
from minbert.eval.evaluate import Predictions
from minbert.eval.predictor import TaskPredictor
from minbert.model.tokenizer import Tokenizer
from minbert.onnx.export import FORMAT, FORMAT_VERSION, INFO, SEGMENT_INPUTS
from minbert.run.manifest import read_checked, verify


class OnnxFolderError(UserError, ValueError):
    """A folder that is not a usable ONNX export."""


class OnnxPredictor(TaskPredictor):
    backend = "onnx"

    def __init__(
        self,
        folder: Path,
        info: dict,
        config: Config,
        tokenizer: Tokenizer,
        threads=0,
        pad_multiple: int = 1,
    ):
        import onnxruntime as ort

        self.pad_multiple = pad_multiple  # as Predictor's: few shapes for a server
        self.folder = folder
        self.info = info
        self.config = config
        self.tokenizer = tokenizer
        self.heads: dict[str, dict] = info["heads"]
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.sessions = {}  # graph file -> its session
        for task in self.tasks:
            for name in (self.heads[task]["graph"], self.heads[task]["compare"]):
                if name:
                    self.sessions[name] = ort.InferenceSession(
                        str(folder / name), sess_options=options, providers=["CPUExecutionProvider"]
                    )

    @classmethod
    def from_dir(cls, path: str | Path, threads: int = 0, pad_multiple: int = 1) -> OnnxPredictor:
        """An export folder; ``threads`` > 0 sets ONNX Runtime's intra-op threads (0: its
        default, one per physical core)."""
        folder = Path(path)
        if not (folder / INFO).is_file():
            raise OnnxFolderError(
                f"{folder}: not an ONNX export (no {INFO}); write one with "
                f"`minbert export RUN {folder} --format onnx`"
            )
        advice = f"Export the run again (`minbert export RUN {folder} --format onnx --overwrite`)"
        verify(folder, advice)
        info = read_checked(folder / INFO, _read_json, advice)
        if info.get("format") != FORMAT or not isinstance(info.get("format_version"), int):
            raise OnnxFolderError(f"{folder / INFO}: not a minbert ONNX export. {advice}")
        if info["format_version"] > FORMAT_VERSION:
            raise OnnxFolderError(
                f"{folder / INFO}: export format {info['format_version']} is newer than this "
                f"minbert reads ({FORMAT_VERSION}); upgrade minbert"
            )
        config = read_checked(folder / "config.toml", load_config, advice)
        meta = read_checked(folder / "meta.json", _read_json, advice)
        tokenizer = Tokenizer(
            folder / "vocab.txt", meta.get("lowercase", True), ptb_text=config.data.ptb_text
        )
        return cls(folder, info, config, tokenizer, threads, pad_multiple)

    @property
    def tasks(self) -> list[str]:
        return list(self.info["tasks"])

    @property
    def quantized(self) -> str | None:
        """None for fp32 graphs, or "int8"."""
        return self.info["quantized"]

    @property
    def parameters(self) -> int:
        """The exported model's parameter count (the encoder once, every head)."""
        return int(self.info["parameters"])

    def embeds_sentences(self, task: str) -> bool:
        """True when ``task``'s head pools one sentence at a time (a single-sentence task or
        a bi-encoded pair task), so a sentence has an embedding of its own."""
        return self.heads[task]["encoding"] != "cross"

    def threshold(self, task: str) -> float:
        """A calibrated binary task's decision threshold on its logit (0 when none)."""
        return float(self.heads[task]["threshold"])

    def outputs_data(self, data: TaskData) -> Predictions:
        self.check_task(data.task)
        task = data.task
        head = self.heads[task]
        spec = TASKS[task]
        width = (spec.num_outputs,) if spec.num_outputs > 1 else ()
        outputs = np.zeros((len(data), *width), dtype=np.float32)
        if len(data):
            encoded = encode_task(
                data,
                self.tokenizer,
                self.config.data.max_length,
                bi_encode=head["encoding"] == "bi",
            )
            compute = self._compared if head["encoding"] == "bi" else self._sequence_outputs
            for rows, out in compute(encoded):
                if head["calibrated"]:
                    out = out - np.float32(head["threshold"])  # its sign is the prediction
                outputs[rows] = out
        return Predictions(self._values(task, outputs), outputs)

    def _run(self, name: str, outputs: list[str], feed: dict[str, np.ndarray]) -> list:
        return self.sessions[name].run(outputs, feed)

    def _segment_feed(self, ids: list[np.ndarray], types: list[np.ndarray]) -> dict:
        segment = pad_sequences(ids, types, 0, self.pad_multiple)
        tensors = {
            "input_ids": segment.input_ids,
            "token_type_ids": segment.token_type_ids,
            "attention_mask": segment.attention_mask,
        }
        return {name: tensors[name].numpy() for name in SEGMENT_INPUTS}

    def _sequence_outputs(self, data: EncodedTask):
        """Head outputs of a single-sentence or cross-encoded task, batch by batch of rows of
        similar length."""
        graph = self.heads[data.task]["graph"]
        for rows in eval_batches(data.lengths, self.config.train.eval_batch_size):
            (ids,), (types,) = data.sequences, data.type_ids
            feed = self._segment_feed([ids[r] for r in rows], [types[r] for r in rows])
            yield rows, self._run(graph, ["output"], feed)[0]

    def sentence_vectors(self, task: str, sequences: list[np.ndarray]) -> np.ndarray:
        """Pooled vectors (N, H') of single sentences' token ids."""
        head = self.heads[task]
        table = np.zeros((len(sequences), head["embedding_size"]), dtype=np.float32)
        for rows in eval_batches(
            np.array([len(x) for x in sequences]), self.config.train.eval_batch_size
        ):
            ids = [sequences[i] for i in rows]
            feed = self._segment_feed(ids, [np.zeros_like(x) for x in ids])
            table[rows] = self._run(head["graph"], ["embedding"], feed)[0]
        return table

    def _compared(self, data: EncodedTask):
        """Head outputs of a bi-encoded pair task: each distinct sentence encoded once, then
        the pairs compared (as ``eval.evaluate`` does it)."""
        distinct, where = data.distinct_sentences()
        table = self.sentence_vectors(data.task, distinct)
        compare = self.heads[data.task]["compare"]
        batch_size = self.config.train.eval_batch_size
        for start in range(0, len(data), batch_size):
            rows = np.arange(start, min(start + batch_size, len(data)))
            feed = {"u": table[where[0, rows]], "v": table[where[1, rows]]}
            yield rows, self._run(compare, ["output"], feed)[0]

    def _values(self, task: str, outputs: np.ndarray) -> np.ndarray:
        """Head outputs -> predictions, as ``MultiTaskModel.predictions``: class ids, 0/1, or
        scores in the label range (float64)."""
        head = self.heads[task]
        if head["label_kind"] == "class":
            return outputs.argmax(-1).astype(np.int64)
        if head["label_kind"] == "binary":
            return (outputs > 0).astype(np.int64)
        low, high = head["score_range"]
        scores = outputs.astype(np.float32)
        if head["normalise"]:
            scores = low + scores * (high - low)
        return np.clip(scores, low, high).astype(np.float64)


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data
