"""ONNX export (``export_onnx``) and ``OnnxPredictor``: ONNX Runtime's outputs equal the
PyTorch path's (``eval.evaluate.predict``) within 1e-4, for every kind of head."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from tiny_run import run_config

from minbert.data.batching import encode_task, pad_sequences
from minbert.data.io import TaskData, read_task_file
from minbert.data.tasks import TASKS
from minbert.eval.evaluate import predict
from minbert.eval.predictor import Predictor, PredictorError
from minbert.model.heads import encode
from minbert.model.loading import load_pretrained
from minbert.model.multitask import MultiTaskModel
from minbert.onnx import ExportError, OnnxFolderError, OnnxPredictor, export_onnx
from minbert.onnx import export as onnx_export
from minbert.run.manifest import CheckpointError
from minbert.run.model_dir import load_model_dir, save_model_dir

TOL = 1e-4
# Longer than the tiny runs' max_length (32 tokens): truncated, and the longest batches.
LONG = "the good film was not a bad movie , " * 6


@pytest.fixture(scope="module")
def exported(finished_tiny_run, tmp_path_factory):
    """The finished tiny run (sst on [CLS], quora cross-encoded, sts bi-encoded cosine on
    mean pooling) exported in fp32."""
    return export_onnx(finished_tiny_run, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="module")
def variety(tiny_setup, tmp_path_factory):
    """An untrained model dir with the heads the finished run lacks: quora bi-encoded with an
    MLP on uvdpc features, mean+max pooling, its own top layer and a calibrated threshold;
    sts cross-encoded on max pooling, unnormalised, with its own top layer."""
    config = run_config(
        tiny_setup,
        "train.tasks=['quora','sts']",
        "heads.quora.encoding=bi",
        "heads.quora.kind=mlp",
        "heads.quora.hidden=[16]",
        "heads.quora.features=uvdpc",
        "heads.quora.pooling=mean+max",
        "heads.quora.own_layers=1",
        "heads.quora.calibrate=0.2",
        "heads.sts.encoding=cross",
        "heads.sts.kind=linear",
        "heads.sts.pooling=max",
        "heads.sts.normalise=false",
        "heads.sts.own_layers=1",
    )
    encoder, tokenizer = load_pretrained(str(tiny_setup / "model"))
    torch.manual_seed(1)
    model = MultiTaskModel(encoder, config.head_specs()).eval()
    with torch.no_grad():
        for p in model.heads.parameters():  # outputs well away from 0 and from each other
            p.normal_(0, 0.3)
        model.heads["quora"].threshold.fill_(0.25)
    root = tmp_path_factory.mktemp("variety")
    save_model_dir(model, tokenizer, config, root / "model", {})
    return root / "model", export_onnx(root / "model", root / "fp32")


@pytest.fixture(scope="module", params=["molora", "pals"])
def adapted(tiny_setup, tmp_path_factory, request):
    """A model dir whose tasks each read their own adapter (random, so that it acts)."""
    from minbert.model.adapters import is_base_parameter

    sets = {
        "molora": ["adapter.kind=molora", "adapter.molora.r=4"],
        "pals": ["adapter.kind=pals", "adapter.pals.size=16", "adapter.pals.heads=4"],
    }[request.param]
    config = run_config(tiny_setup, "heads.sst.own_layers=1", *sets)
    encoder, tokenizer = load_pretrained(str(tiny_setup / "model"))
    torch.manual_seed(2)
    model = MultiTaskModel(encoder, config.head_specs(), adapter=config.adapter).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not is_base_parameter(name):  # adapters and heads; the base stays the base
                p.normal_(0, 0.3)
    root = tmp_path_factory.mktemp(request.param)
    save_model_dir(model, tokenizer, config, root / "model", {})
    return root / "model", export_onnx(root / "model", root / "onnx")


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_onnx_graphs_of_per_task_adapters_equal_pytorch(adapted, tiny_setup, task):
    model_dir, folder = adapted
    _check_parity(model_dir, folder, task, tiny_setup)


def _rows(setup, task):
    dev = read_task_file(setup / "data" / TASKS[task].files["dev"], TASKS[task], "dev")
    extra = [(LONG,), ("a",)] if len(dev.texts[0]) == 1 else [(LONG, "a dog"), ("a", LONG)]
    return [*dev.texts, *extra]


def _torch_outputs(model_dir, task, rows, batch_size):
    model, tokenizer, config = load_model_dir(model_dir)
    table = TaskData(task, "input", model_dir, [str(i) for i in range(len(rows))], rows, None, [])
    encoded = encode_task(table, tokenizer, config.data.max_length, config.bi_encoded(task))
    return predict(model, encoded, batch_size), table


def _check_parity(model_dir, folder, task, setup):
    onnx = OnnxPredictor.from_dir(folder, threads=1)
    rows = _rows(setup, task)
    inputs = [r[0] if len(r) == 1 else r for r in rows]
    for batch_size in (1, 5, 128):  # one row per run; several of similar length; all at once
        want, table = _torch_outputs(model_dir, task, rows, batch_size)
        onnx.config = _with_eval_batch(onnx.config, batch_size)
        got = onnx.outputs(task, inputs)
        assert got.outputs.shape == want.outputs.shape and got.outputs.dtype == np.float32
        np.testing.assert_allclose(got.outputs, want.outputs, rtol=0, atol=TOL)
        if TASKS[task].label_kind == "score":
            np.testing.assert_allclose(got.values, want.values, rtol=0, atol=10 * TOL)
        else:
            assert got.values.dtype == want.values.dtype
            np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(onnx.predict_data(table), got.values)


def _with_eval_batch(config, size):
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, eval_batch_size=size)
    )


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_onnx_outputs_equal_pytorch_outputs(exported, finished_tiny_run, tiny_setup, task):
    _check_parity(finished_tiny_run, exported, task, tiny_setup)


@pytest.mark.parametrize("task", ["quora", "sts"])
def test_onnx_outputs_equal_pytorch_outputs_other_heads(variety, tiny_setup, task):
    model_dir, folder = variety
    _check_parity(model_dir, folder, task, tiny_setup)
    info = json.loads((folder / "onnx.json").read_text())
    assert info["heads"]["quora"]["threshold"] == pytest.approx(0.25)
    assert info["heads"]["quora"]["calibrated"] and not info["heads"]["sts"]["calibrated"]


def _torch_embeddings(model_dir, task, texts):
    model, tokenizer, config = load_model_dir(model_dir)
    head = model.heads[task]
    encoded = tokenizer.encode_batch(texts, None, config.data.max_length)
    ids = [np.asarray(e.input_ids) for e in encoded]
    segment = pad_sequences(ids, [np.zeros_like(x) for x in ids])
    with torch.inference_mode():
        return encode(model.encoder, segment, head.pooling, head.own_layers).numpy()


def test_embeddings_equal_the_heads_pooled_vectors(exported, finished_tiny_run, variety):
    texts = ["a good film", "the dog", LONG, "why is the cat not great ?"]
    for model_dir, folder, task in [
        (finished_tiny_run, exported, "sts"),
        (finished_tiny_run, exported, "sst"),
        (*variety, "quora"),
    ]:
        onnx = OnnxPredictor.from_dir(folder)
        got = onnx.embed(task, texts)
        want = _torch_embeddings(model_dir, task, texts)
        assert got.shape == want.shape == (4, onnx.heads[task]["embedding_size"])
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    with pytest.raises(PredictorError, match="quora encodes its two sentences together"):
        OnnxPredictor.from_dir(exported).embed("quora", ["a film"])


def test_graphs_and_facts(exported):
    info = json.loads((exported / "onnx.json").read_text())
    assert info["format_version"] == 1 and info["quantized"] is None
    assert info["tasks"] == ["sst", "quora", "sts"]
    names = sorted(p.name for p in exported.iterdir())
    assert names == [
        "config.toml",
        "manifest.json",
        "meta.json",
        "onnx.json",
        "quora.onnx",
        "sst.onnx",
        "sts-compare.onnx",
        "sts.onnx",
        "vocab.txt",
    ]
    import onnx

    graph = onnx.load(exported / "sst.onnx").graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input]
    assert [v.name for v in graph.input] == ["input_ids", "token_type_ids", "attention_mask"]
    assert dims == [["batch", "sequence"]] * 3
    assert [v.name for v in graph.output] == ["embedding", "output"]
    assert info["heads"]["sts"]["compare"] == "sts-compare.onnx"
    assert OnnxPredictor.from_dir(exported).predict("sst", []).shape == (0,)


def test_bad_requests_get_the_torch_predictors_messages(exported, finished_tiny_run):
    onnx = OnnxPredictor.from_dir(exported)
    torch_predictor = Predictor.from_run(finished_tiny_run, device="cpu")
    bad = [
        ("cfimdb", ["a film"]),
        ("sts", ["only one sentence"]),
        ("sst", ["fine", ("a", "b")]),
        ("sst", ["   "]),
        ("quora", [("a", "\u200b")]),
    ]
    for task, inputs in bad:
        with pytest.raises(PredictorError) as want:
            torch_predictor.predict(task, inputs)
        with pytest.raises(PredictorError) as got:
            onnx.predict(task, inputs)
        assert str(got.value) == str(want.value)
    with pytest.raises(PredictorError, match=r"did not train task 'cfimdb'; it trained \['sst'"):
        onnx.check_task("cfimdb")
    with pytest.raises(PredictorError, match="input 1: empty text"):
        onnx.embed("sst", ["fine", ""])


def test_int8_export_predicts(finished_tiny_run, exported, tiny_setup, tmp_path):
    # Replaces an earlier export (overwrite) with the int8 graphs of one task.
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    export_onnx(finished_tiny_run, out, quantize="int8", overwrite=True, tasks=["sst"])
    info = json.loads((out / "onnx.json").read_text())
    assert info["quantized"] == "int8" and info["tasks"] == ["sst"]
    assert info["quantization"]["per_channel"] and "Gather" in info["quantization"]["ops"]
    assert not (out / "quora.onnx").exists() and not (out / "fp32").exists()
    assert (out / "sst.onnx").stat().st_size < (exported / "sst.onnx").stat().st_size
    import onnx

    ops = {n.op_type for n in onnx.load(out / "sst.onnx").graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    onnx_predictor = OnnxPredictor.from_dir(out)
    assert onnx_predictor.quantized == "int8" and onnx_predictor.tasks == ["sst"]
    inputs = [r[0] for r in _rows(tiny_setup, "sst")]
    got = onnx_predictor.outputs("sst", inputs)
    assert got.values.dtype == np.int64 and got.values.shape == (len(inputs),)
    assert set(got.values) <= set(range(5)) and got.outputs.shape == (len(inputs), 5)
    assert np.isfinite(got.outputs).all()


def test_refusals(finished_tiny_run, exported, tmp_path):
    with pytest.raises(ExportError, match="unknown quantize 'int4'"):
        export_onnx(finished_tiny_run, tmp_path / "a", quantize="int4")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_onnx(finished_tiny_run, exported)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an ONNX export"):
        export_onnx(finished_tiny_run, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="holds the model being exported"):
        export_onnx(finished_tiny_run, finished_tiny_run, overwrite=True)
    with pytest.raises(ExportError, match="no trained model here"):
        export_onnx(tmp_path, tmp_path / "b")
    with pytest.raises(ExportError, match=r"tasks \['cfimdb'\]: this run trained"):
        export_onnx(finished_tiny_run, tmp_path / "c", tasks=["cfimdb"])
    with pytest.raises(OnnxFolderError, match="not an ONNX export"):
        OnnxPredictor.from_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_a_damaged_export_is_refused(exported, tmp_path):
    copy = shutil.copytree(exported, tmp_path / "copy")
    data = bytearray((copy / "sst.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "sst.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sst.onnx is damaged"):
        OnnxPredictor.from_dir(copy)


def test_a_failed_export_leaves_no_folder(finished_tiny_run, exported, tmp_path, monkeypatch):
    calls = []

    def export_graph(module, example, path, *args):
        calls.append(path.name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        path.write_bytes(b"half a graph")

    monkeypatch.setattr(onnx_export, "export_graph", export_graph)
    monkeypatch.setattr(onnx_export, "check_graph", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(finished_tiny_run, tmp_path / "new")
    assert calls == ["sst.onnx", "quora.onnx"]
    assert list(tmp_path.iterdir()) == []
    # replacing an earlier export: the earlier one stays as it was
    earlier = shutil.copytree(exported, tmp_path / "earlier")
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    calls.clear()
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(finished_tiny_run, earlier, overwrite=True)
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]
