import numpy as np
import pytest
import torch

from minbert.config import ConfigError, load_config
from minbert.data.batching import encode_task
from minbert.data.io import TaskData
from minbert.data.tasks import TASKS
from minbert.eval.evaluate import predict
from minbert.model.bert import BertSelfAttention
from minbert.model.heads import pair_features, pool
from minbert.model.multitask import MultiTaskModel
from minbert.objectives.task import task_loss


def _data(task, texts, labels):
    return TaskData(
        task,
        "train",
        None,
        [f"r{i}" for i in range(len(texts))],
        texts,
        np.asarray(labels, dtype=np.int64 if TASKS[task].label_kind == "class" else np.float32),
        [],
    )


SENTENCES = [("the movie is good .",), ("a bad film",), ("what is not great ?",)]
PAIRS = [
    ("the dog was good", "a dog is good"),
    ("why run ?", "how play ?"),
    ("the cat", "the cat !"),
]


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean", "max", "mean+max"])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_sentiment_heads(tiny_model, tiny_tokenizer, pooling, kind):
    config = load_config(
        None, [f"heads.sst.pooling={pooling}", f"heads.sst.kind={kind}", "heads.sst.hidden=[16, 8]"]
    )
    model = MultiTaskModel(tiny_model, config.head_specs(["sst"]))
    data = encode_task(_data("sst", SENTENCES, [0, 4, 2]), tiny_tokenizer, 32, bi_encode=False)
    batch = data.batch(np.arange(3))
    out = model("sst", batch)
    assert out.shape == (3, 5)
    loss = task_loss(TASKS["sst"], out, batch.labels)
    loss.backward()
    assert tiny_model.embeddings.word_embeddings.weight.grad is not None
    assert model.predictions("sst", out).shape == (3,)


@pytest.mark.parametrize("task", ["quora", "sts"])
@pytest.mark.parametrize(
    "head",
    [
        ["encoding=cross"],
        ["encoding=cross", "pooling=mean", "kind=mlp"],
        ["encoding=bi", "features=uv"],
        ["encoding=bi", "features=uvd", "kind=mlp"],
        ["encoding=bi", "features=uvdp", "pooling=mean+max"],
        ["encoding=bi", "features=uvdpc", "kind=mlp", "pooling=mean"],
        ["encoding=bi", "kind=cosine", "pooling=mean"],
    ],
)
def test_pair_heads(tiny_model, tiny_tokenizer, task, head):
    config = load_config(None, [f"heads.{task}.{h}" for h in head])
    model = MultiTaskModel(tiny_model, config.head_specs([task]))
    bi = config.head(task).encoding == "bi"
    data = encode_task(
        _data(task, PAIRS, [1, 0, 1] if task == "quora" else [4.5, 0.2, 3.0]),
        tiny_tokenizer,
        32,
        bi_encode=bi,
    )
    assert len(data.sequences) == (2 if bi else 1)
    batch = data.batch(np.arange(3))
    out = model(task, batch)
    assert out.shape == (3,)
    targets = model.training_targets(task, batch.labels)
    if task == "sts":
        assert targets.max() <= 1.0  # normalised to [0, 1]
    task_loss(TASKS[task], out, targets).backward()
    preds = model.predictions(task, out)
    if task == "quora":
        assert set(preds.tolist()) <= {0, 1}
    else:
        assert preds.min() >= 0 and preds.max() <= 5


def test_bi_encoder_pair_is_siamese(tiny_model, tiny_tokenizer):
    """Sentence a's embedding does not depend on sentence b (no cross attention)."""
    config = load_config(None, ["heads.sts.encoding=bi", "heads.sts.kind=cosine"])
    model = MultiTaskModel(tiny_model, config.head_specs(["sts"]))
    head = model.heads["sts"]
    d1 = encode_task(_data("sts", [("the cat", "a dog is good")], [1.0]), tiny_tokenizer, 32, True)
    d2 = encode_task(_data("sts", [("the cat", "why")], [1.0]), tiny_tokenizer, 32, True)
    u1, _ = head.embed_pair(tiny_model, d1.batch(np.arange(1)))
    u2, _ = head.embed_pair(tiny_model, d2.batch(np.arange(1)))
    torch.testing.assert_close(u1, u2, atol=1e-5, rtol=1e-5)


def test_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, None, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, None, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, None, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, None, "mean+max").shape == (1, 4)


def test_pair_features():
    u, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]])
    assert pair_features(u, v, "uvdp").tolist() == [[1.0, -2.0, 3.0, 1.0, 2.0, 3.0, 3.0, -2.0]]
    assert pair_features(u, v, "uv").shape == (1, 4)
    with_cos = pair_features(u, v, "uvdpc")
    assert with_cos.shape == (1, 9)
    assert with_cos[0, -1].item() == pytest.approx((3.0 - 2.0) / (5**0.5 * 10**0.5))


def test_missing_head_is_a_clear_error(tiny_model):
    model = MultiTaskModel(tiny_model, load_config().head_specs(["sst"]))
    with pytest.raises(KeyError, match="no head for task 'sts'"):
        model("sts", None)


def test_swap_shows_both_orders_in_training_only(tiny_model, tiny_tokenizer):
    config = load_config(
        None, ["heads.quora.encoding=bi", "heads.quora.swap=true", "heads.quora.dropout=0"]
    )
    model = MultiTaskModel(tiny_model, config.head_specs(["quora"]))
    head = model.heads["quora"]
    batch = encode_task(_data("quora", PAIRS[:1], [1]), tiny_tokenizer, 32, bi_encode=True).batch(
        np.arange(1)
    )
    model.eval()
    with torch.no_grad():
        u, v = head.embed_pair(tiny_model, batch)
        in_order = head.classifier(pair_features(u, v, "uvdp")).item()
        swapped = head.classifier(pair_features(v, u, "uvdp")).item()
        assert model("quora", batch).item() == pytest.approx(in_order)  # eval: never swapped
        head.train()  # the encoder stays in eval mode: no dropout
        torch.manual_seed(0)
        seen = [model("quora", batch).item() for _ in range(20)]
    assert in_order != pytest.approx(swapped)
    assert all(s == pytest.approx(in_order) or s == pytest.approx(swapped) for s in seen)
    assert any(s == pytest.approx(in_order) for s in seen)
    assert any(s == pytest.approx(swapped) for s in seen)


def test_swap_needs_a_bi_encoded_pair_task():
    with pytest.raises(ConfigError, match="heads.sst.swap"):
        load_config(None, ["heads.sst.swap=true"])


@pytest.mark.parametrize(
    "task, head, data",
    [
        ("sst", ["pooling=cls"], (SENTENCES, [0, 4, 2])),
        ("sts", ["encoding=bi", "kind=cosine", "pooling=mean"], (PAIRS, [1.0, 2.5, 4.0])),
    ],
)
def test_own_layers_start_as_the_shared_ones_and_only_the_task_trains_them(
    tiny_model, tiny_tokenizer, task, head, data
):
    options = [f"heads.{task}.{h}" for h in head]
    shared = MultiTaskModel(tiny_model, load_config(None, options).head_specs([task])).eval()
    config = load_config(None, [*options, f"heads.{task}.own_layers=1"])
    model = MultiTaskModel(tiny_model, config.head_specs([task])).eval()
    encoded = encode_task(_data(task, *data), tiny_tokenizer, 32, bi_encode=TASKS[task].is_pair)
    batch = encoded.batch(np.arange(3))
    own = model.heads[task].own_layers
    assert len(own) == 1 and own[0] is not tiny_model.encoder.layer[-1]
    # At the start the task's path is the pretrained encoder's.
    shared.heads[task].load_state_dict(
        {k: v for k, v in model.heads[task].state_dict().items() if "own_layers" not in k}
    )
    torch.testing.assert_close(model(task, batch), shared(task, batch))
    with torch.no_grad():  # make the copy differ: evaluation must read it too
        own[0].output.dense.weight.mul_(2.0)
    outputs = model(task, batch)
    assert not torch.allclose(outputs, shared(task, batch))
    evaluated = predict(model, encoded).outputs
    np.testing.assert_allclose(evaluated, outputs.detach().numpy(), rtol=1e-4, atol=1e-5)
    targets = model.training_targets(task, batch.labels)
    task_loss(TASKS[task], model(task, batch), targets).backward()
    assert all(p.grad is None for p in tiny_model.encoder.layer[-1].parameters())
    assert all(p.grad is not None for p in tiny_model.encoder.layer[0].parameters())
    assert all(p.grad is not None for p in own.parameters())
    # The copies train at the encoder's learning rate, not train.head_lr.
    names = [n for n, _ in model.named_parameters() if ".own_layers." in n]
    assert names and not any(MultiTaskModel.is_head_parameter(n) for n in names)


def test_set_attention_reaches_the_heads_own_layers(tiny_model, tiny_tokenizer):
    # The copies are made when the head is built; switching the encoder's list of layers
    # alone used to leave them on the implementation they were copied with.
    config = load_config(None, ["heads.sst.own_layers=1"])
    model = MultiTaskModel(tiny_model, config.head_specs(["sst"])).eval()
    encoded = encode_task(_data("sst", SENTENCES, [0, 4, 2]), tiny_tokenizer, 32, bi_encode=False)
    batch = encoded.batch(np.arange(3))
    with torch.no_grad():
        sdpa = model("sst", batch)
    model.set_attention("manual")
    impls = [m.impl for m in model.modules() if isinstance(m, BertSelfAttention)]
    assert len(impls) == 3 and set(impls) == {"manual"}  # 2 shared layers + 1 own copy
    with torch.no_grad():
        torch.testing.assert_close(model("sst", batch), sdpa)
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        model.set_attention("flash")


def test_own_layers_beyond_the_encoder_are_a_clear_error(tiny_model):
    config = load_config(None, ["heads.sst.own_layers=3"])
    with pytest.raises(ConfigError, match=r"heads.sst.own_layers: 3 is more than .* 2 layers"):
        MultiTaskModel(tiny_model, config.head_specs(["sst"]))


def test_head_parameters_are_the_heads_own():
    assert MultiTaskModel.is_head_parameter("heads.sst.classifier.0.weight")
    assert not MultiTaskModel.is_head_parameter("heads.sst.own_layers.0.output.dense.weight")
    assert not MultiTaskModel.is_head_parameter("encoder.layer.0.output.dense.weight")
