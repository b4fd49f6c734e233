import numpy as np
import torch

from minbert.data.batching import TaskStream, encode_task, eval_batches, grouped_order
from minbert.data.io import TaskData


def test_grouped_order_is_a_permutation_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=1000)
    order = grouped_order(lengths, 16, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(1000))

    def padding(o):
        return sum(
            lengths[o[i : i + 16]].max() * len(o[i : i + 16]) - lengths[o[i : i + 16]].sum()
            for i in range(0, len(o), 16)
        )

    plain = grouped_order(lengths, 16, np.random.default_rng(1), group=False)
    assert padding(order) < 0.25 * padding(plain)


def test_eval_batches_cover_every_row_once():
    lengths = np.array([5, 1, 9, 3, 3])
    batches = eval_batches(lengths, 2)
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4]


def test_stream_passes_never_repeat_within_a_pass(tiny_tokenizer):
    data = TaskData(
        "sst",
        "train",
        None,
        [str(i) for i in range(10)],
        [("the movie " + "good " * i,) for i in range(10)],
        np.zeros(10, dtype=np.int64),
        [],
    )
    enc = encode_task(data, tiny_tokenizer, 32, bi_encode=False)
    stream = TaskStream(enc, seed=0)
    rows = [stream.take(4).rows for _ in range(3)]  # 4 + 4 + 2 (end of pass)
    assert [len(r) for r in rows] == [4, 4, 2]
    assert sorted(np.concatenate(rows).tolist()) == list(range(10))
    assert stream.take(4).rows.shape == (4,) and stream.passes == 2


def test_padding_and_masks(tiny_tokenizer):
    data = TaskData(
        "sts",
        "train",
        None,
        ["a", "b"],
        [("the cat", "a dog"), ("the movie was good", "bad")],
        np.array([1.0, 2.0], dtype=np.float32),
        [],
    )
    cross = encode_task(data, tiny_tokenizer, 32, bi_encode=False).batch(np.array([0, 1]))
    seg = cross.segments[0]
    assert seg.input_ids.shape == seg.attention_mask.shape == seg.token_type_ids.shape
    assert seg.attention_mask.sum(1).tolist() == [7, 8]
    assert seg.token_type_ids[0].tolist()[:7] == [0, 0, 0, 0, 1, 1, 1]


def test_batch_twice_repeats_every_row_after_the_batch(tiny_tokenizer):
    texts = [("a good film",), ("bad",)]
    data = TaskData("sst", "train", None, ["a", "b"], texts, np.array([3, 1]), [])
    batch = encode_task(data, tiny_tokenizer, 16, bi_encode=False).batch(np.arange(2))
    doubled = batch.twice()
    assert len(doubled) == 4 and doubled.rows.tolist() == [0, 1, 0, 1]
    assert doubled.labels.tolist() == [3, 1, 3, 1]
    for one, two in zip(batch.segments, doubled.segments, strict=True):
        for x, y in zip(one.as_tuple(), two.as_tuple(), strict=True):
            assert torch.equal(y, torch.cat([x, x]))
