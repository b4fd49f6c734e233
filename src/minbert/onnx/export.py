"""ONNX export of a trained model directory, for ONNX Runtime on CPU
(``minbert export RUN DIR --format onnx``; ``OnnxPredictor`` reads the folder).

The export folder::

    onnx.json            what the folder holds: format version, tasks, each task's head facts
                         (graph files, kind, label kind, normalise, threshold, score range,
                         embedding size), quantisation, opset, minbert/torch/onnx versions
    <task>.onnx          one graph per task, taking ONE padded segment:
                           inputs   input_ids, token_type_ids, attention_mask
                                    int64 (batch, sequence), both axes dynamic
                           outputs  embedding  float32 (batch, H'): the pooled vector the head
                                               reads, after the task's own top layers if any
                                    output     sequence heads only (a single sentence or a
                                               cross-encoded pair): the head output, as
                                               ``model(task, batch)`` gives it: class logits
                                               (batch, C), a binary logit or a score (batch,)
    <task>-compare.onnx  bi-encoded pair tasks: u, v float32 (batch, H') -> output (batch,),
                         the head's ``compare`` (cosine, scale * cos + bias, or the classifier
                         on pair features; never swapped)
    vocab.txt, config.toml, meta.json   copied from the model directory (tokenizer, settings)
    manifest.json        size and SHA-256 of every file, checked when the folder is loaded

One graph per task, not one graph with every task's output: ONNX Runtime runs a whole graph
whatever outputs a call asks for (microsoft/onnxruntime#16483), so one graph would run every
head, and every task's own top layers, for a request of one task; and the tasks do not take
the same input (a cross-encoded pair is one sequence, a bi-encoded pair two). The price is
size: every graph holds its own copy of the encoder.

Graph outputs are the raw head outputs. A calibrated binary task's threshold is written in
``onnx.json`` and subtracted by the predictor, as ``eval.evaluate.predict`` does.

The graphs are traced with ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript),
with the encoder's token packing off (``BertModel.pack_tokens``: it picks rows by a
data-dependent ``nonzero``): the padded pass, equal to the packed one up to float rounding.
torch.export keeps the batch and sequence axes symbolic or fails: a shape frozen into the
graph cannot pass silently. The TorchScript exporter (``dynamo=False``) gives the same outputs
here and traces 2-3x faster, but it is deprecated (torch warns that it will be removed) and
traces whatever shapes Python computed. Each graph is run once more after export, on a batch
of another size and length, against the PyTorch module.

``quantize="int8"``: ONNX Runtime's dynamic quantisation (``quantize_dynamic``): the weights
of every MatMul and Gemm stored as int8 with one scale per output channel, their inputs
quantised to uint8 batch by batch at run time, and the embedding tables (Gather) stored as
int8 too; LayerNorm, softmax and the activations between layers stay fp32. Per channel, the
tables included, moved fewer predictions off the fp32 ones than per-tensor MatMul/Gemm alone
(MiniLM, SST dev: 4% of the classes against 8%) at the same speed, and the embedding table is
most of an int8 graph's size otherwise (30 MiB a graph against 63 MiB). The folder then holds
the int8 graphs alone, under the same file names, and ``onnx.json`` says
``"quantized": "int8"``; export twice, into two folders, to keep both.

The folder is written next to ``out_dir`` under a temporary name and renamed into place when
complete: an export that fails leaves no half-written folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import minbert
from minbert.data.batching import Segment
from minbert.data.tasks import TASKS
from minbert.errors import UserError
from minbert.model.heads import BiEncoderHead, encode, pooled_size
from minbert.model.multitask import MultiTaskModel
from minbert.run.atomic import swap_in
from minbert.run.manifest import write_manifest
from minbert.run.model_dir import find_model_dir, load_model_dir

FORMAT = "minbert-onnx"
FORMAT_VERSION = 1
OPSET = 20
QUANTIZE = ("int8",)
# int8 weights of every MatMul and Gemm, one scale per output channel, and of the embedding
# tables (Gather): docs in the module docstring, measurements in the ONNX notes.
QUANTIZED_OPS = ["MatMul", "Gemm", "Gather"]
INFO = "onnx.json"
COPIED = ("vocab.txt", "config.toml", "meta.json")
SEGMENT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
EXPORTER = "torch.onnx.export(dynamo=True)"
# A graph whose outputs differ from the PyTorch module's by more than this (times the
# outputs' scale, at least 1) is a failed export.
CHECK_TOLERANCE = 1e-3

log = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """An export that cannot be done as asked (no model there, the folder taken, ...)."""


class ExportCheckError(RuntimeError):
    """An exported graph that does not compute what the PyTorch model does (a bug)."""


class SegmentGraph(nn.Module):
    """One padded segment -> the head's pooled vector, and a sequence head's output."""

    def __init__(self, model: MultiTaskModel, task: str):
        super().__init__()
        self.encoder = model.encoder
        self.head = model.heads[task]
        self.sequence_head = not isinstance(self.head, BiEncoderHead)
        # a per-task adapter (LoRA experts, PALs) acts by the task of the forward
        self.task, self.running = task, model.running

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        segment = Segment(input_ids, attention_mask, token_type_ids)
        with self.running(self.task):
            embedding = encode(self.encoder, segment, self.head.pooling, self.head.own_layers)
        if not self.sequence_head:
            return embedding
        out = self.head.classifier(embedding)  # SequenceHead.forward on the pooled vector
        return embedding, out.squeeze(-1) if self.head.squeeze else out


class CompareGraph(nn.Module):
    """A bi-encoded head's output from the two sentences' vectors (B, H')."""

    def __init__(self, head: BiEncoderHead):
        super().__init__()
        self.head = head

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return self.head.compare(u, v)


def export_onnx(
    run_or_dir: str | Path,
    out_dir: str | Path,
    quantize: str | None = None,
    overwrite: bool = False,
    tasks: list[str] | None = None,
) -> Path:
    """Export the model of a run folder (its ``best/``) or model directory to ``out_dir``
    (layout: this module's docstring); ``quantize``: None (fp32) or "int8". An existing
    ``out_dir`` must be empty, or an earlier export with ``overwrite``. ``tasks``: export
    these of the run's tasks alone (each graph holds an encoder; default: all of them).
    Returns ``out_dir``."""
    if quantize not in (None, *QUANTIZE):
        raise ExportError(f"unknown quantize {quantize!r}: use 'int8', or none for fp32")
    out = Path(out_dir)
    try:
        model_dir = find_model_dir(run_or_dir)
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from None
    check_out_dir(out, model_dir, overwrite)
    model, _, config = load_model_dir(model_dir)
    tasks = list(dict.fromkeys(model.tasks if tasks is None else tasks))
    if not tasks or any(t not in model.tasks for t in tasks):
        raise ExportError(f"tasks {tasks}: this run trained {model.tasks}; export some of those")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export.tmp")
    if tmp.exists():  # left by an export that was killed
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        heads = write_graphs(model, tasks, tmp, quantize)
        for name in COPIED:
            shutil.copyfile(model_dir / name, tmp / name)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tasks": tasks,
            "quantized": quantize,
            "quantization": None
            if quantize is None
            else {"method": "dynamic", "ops": QUANTIZED_OPS, "per_channel": True},
            "opset": OPSET,
            "exporter": EXPORTER,
            "inputs": list(SEGMENT_INPUTS),
            "max_length": config.data.max_length,
            "parameters": sum(
                p.numel()
                for module in [model.encoder, *(model.heads[t] for t in tasks)]
                for p in module.parameters()
            ),
            "source": str(model_dir.resolve()),
            "versions": versions(),
            "heads": heads,
        }
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        write_manifest(tmp)
        check_out_dir(out, model_dir, overwrite)  # once more: the export took a while
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s (%s)", model_dir, out, quantize or "fp32")
    return out


def check_out_dir(out: Path, model_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that holds something other than an earlier export (or anything at
    all, without ``overwrite``), and one that holds the model being exported."""
    resolved, source = out.resolve(), model_dir.resolve()
    if resolved == source or resolved in source.parents:
        raise ExportError(
            f"{out} holds the model being exported ({model_dir}): choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(
                f"{out} exists and is not empty: choose another folder, or replace an earlier "
                "export with overwrite=True (--overwrite)"
            )
        if not (out / INFO).is_file():
            raise ExportError(
                f"{out} is not an ONNX export (no {INFO}): it is not replaced; choose another folder"
            )


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {
        "minbert": minbert.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_graphs(
    model: MultiTaskModel, tasks: list[str], folder: Path, quantize: str | None
) -> dict[str, dict]:
    """The graphs of ``tasks`` in ``folder`` (fp32 first, then quantised in their place); returns
    the ``heads`` table of onnx.json."""
    model.eval()
    encoder = model.encoder
    packing = encoder.pack_tokens
    encoder.pack_tokens = False
    fp32 = folder / "fp32" if quantize else folder
    fp32.mkdir(exist_ok=True)
    heads = {}
    try:
        for task in tasks:
            heads[task] = head_facts(model, task)
            graph = SegmentGraph(model, task).eval()
            outputs = ["embedding", "output"] if graph.sequence_head else ["embedding"]
            longest = encoder.config.max_position_embeddings
            files = [
                (heads[task]["graph"], graph, SEGMENT_INPUTS, outputs, longest)
                + segment_inputs(encoder.config)
            ]
            if heads[task]["compare"]:
                compare = CompareGraph(model.heads[task]).eval()
                files.append(
                    (heads[task]["compare"], compare, ("u", "v"), ["output"], None)
                    + vector_inputs(heads[task]["embedding_size"])
                )
            for name, module, inputs, names, length, example, probe in files:
                export_graph(module, example, fp32 / name, inputs, names, length)
                check_graph(module, probe, fp32 / name, inputs)
                if quantize:
                    quantize_graph(fp32 / name, folder / name)
                    check_graph(module, probe, folder / name, inputs, exact=False)
    finally:
        encoder.pack_tokens = packing
    if quantize:
        shutil.rmtree(fp32)
    return heads


def head_facts(model: MultiTaskModel, task: str) -> dict:
    """What the predictor needs to know of a task's head, beyond its graphs."""
    spec = TASKS[task]
    head = model.heads[task]
    bi = isinstance(head, BiEncoderHead)
    threshold = model.threshold(task)
    return {
        "graph": f"{task}.onnx",
        "compare": f"{task}-compare.onnx" if bi else None,
        "kind": "bi-encoder" if bi else "sequence",
        "encoding": "bi" if bi else "cross" if spec.is_pair else "single",
        "label_kind": spec.label_kind,
        "num_outputs": spec.num_outputs,
        "pooling": head.pooling,
        "own_layers": len(head.own_layers) if head.own_layers is not None else 0,
        "embedding_size": pooled_size(model.encoder.config.hidden_size, head.pooling),
        "normalise": bool(model.normalise[task]),
        "calibrated": threshold is not None,
        "threshold": 0.0 if threshold is None else float(threshold),
        "score_range": list(spec.score_range),
    }


def segment_inputs(config) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The example segment the graph is traced on, and a probe of another batch size and
    length (padding and second-segment type ids in both)."""
    rng = np.random.default_rng(0)

    def segment(batch: int, length: int) -> tuple[Tensor, ...]:
        ids = rng.integers(1, config.vocab_size, size=(batch, length))
        mask = np.ones((batch, length), dtype=np.int64)
        mask[-1, length // 2 :] = 0
        ids[mask == 0] = config.pad_token_id
        types = np.zeros((batch, length), dtype=np.int64)
        types[:, length // 3 :] = 1
        types[mask == 0] = 0
        return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in (ids, types, mask))

    longest = config.max_position_embeddings
    return segment(2, min(16, longest)), segment(3, min(7, longest))


def vector_inputs(width: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)

    def pair(batch: int) -> tuple[Tensor, ...]:
        return tuple(torch.randn(batch, width, generator=generator) for _ in range(2))

    return pair(2), pair(3)


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: list[str],
    longest: int | None = None,
) -> None:
    """Trace ``module`` on ``example`` and save its graph (weights inside the file), with a
    dynamic batch axis on every input and, with ``longest``, a dynamic sequence axis (up to
    ``longest``) as well."""
    batch = torch.export.Dim("batch")
    if longest:
        sequence = torch.export.Dim("sequence", max=longest)
        shapes = {name: {0: batch, 1: sequence} for name in inputs}
    else:
        shapes = {name: {0: batch} for name in inputs}
    with _quiet():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=list(inputs),
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    _unclash_output_names(program.model.graph)
    program.save(path, external_data=False)


def _unclash_output_names(graph) -> None:
    """Rename inner values that carry a graph output's name. The exporter (torch 2.13) names
    the outputs as asked without renaming an inner value already called that (aten.embedding's
    result is named "embedding"): ONNX then rejects the duplicate definition."""
    outputs = {id(v) for v in graph.outputs}
    taken = {v.name for v in graph.outputs}
    names = {v.name for node in graph for v in node.outputs} | {v.name for v in graph.inputs}
    names |= set(graph.initializers)
    for node in graph:
        for value in node.outputs:
            if value.name in taken and id(value) not in outputs:
                n = 1
                while f"{value.name}_{n}" in names:
                    n += 1
                value.name = f"{value.name}_{n}"
                names.add(value.name)


@contextlib.contextmanager
def _quiet():
    """The exporter's warnings and log lines (torchvision missing, axis names shared) are
    about its internals, not the user's model."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def quantize_graph(src: Path, dst: Path) -> None:
    """``src``'s graph with int8 MatMul/Gemm weights (dynamic quantisation) in ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(src)
    # The exporter records the weights' shapes in value_info too; the quantiser transposes a
    # Gemm's weight in place (Gemm -> MatMul) and its shape inference then finds the old shape.
    weights = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            model,
            dst,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """The quantiser's advice to run its pre-processing (shape inference and graph
    optimisation, for static quantisation's calibration) is not for dynamic quantisation."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def check_graph(
    module: nn.Module, probe: tuple[Tensor, ...], path: Path, inputs: tuple[str, ...], exact=True
) -> None:
    """Run the graph with ONNX Runtime on ``probe`` (another batch size and length than the
    example's) and compare with the module: the same shapes, and (``exact``) the same values
    up to ``CHECK_TOLERANCE``."""
    import onnxruntime as ort

    with torch.inference_mode():
        expected = module(*probe)
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: x.numpy() for name, x in zip(inputs, probe, strict=True)})
    for want, have in zip(expected, got, strict=True):
        want = want.float().numpy()
        if want.shape != have.shape or not np.isfinite(have).all():
            raise ExportCheckError(
                f"{path.name}: output of shape {have.shape} (expected {want.shape}), "
                f"{int((~np.isfinite(have)).sum())} values not finite"
            )
        scale = max(1.0, float(np.abs(want).max()))
        if exact and not np.allclose(have, want, rtol=0, atol=CHECK_TOLERANCE * scale):
            raise ExportCheckError(
                f"{path.name}: ONNX Runtime's outputs differ from PyTorch's by up to "
                f"{float(np.abs(have - want).max()):.3g}"
            )
