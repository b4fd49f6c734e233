"""Each speed optimisation leaves the outputs of the plain path unchanged, within the tolerance
of the dtype it computes in: length-grouped and length-sorted batches, evaluation under
``torch.inference_mode``, bf16 autocast (alone and with sdpa attention), the cheaper dropout
mask, Q/K/V in one matmul, the [CLS]-only last layer of cls/pooler heads, and packed
(unpadded) batches. The sdpa and
manual attention paths are compared in tests/test_bert.py.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minbert.config import config_from_dict
from minbert.data.batching import EncodedTask, Segment, encode_task, grouped_order
from minbert.data.io import TaskData
from minbert.device import keep_freed_memory
from minbert.eval.evaluate import predict
from minbert.model.bert import GROUP_LENGTH_SHARE, Packing, attention_groups, packed_rows
from minbert.model.dropout import dropout, keep_mask
from minbert.model.heads import encode
from minbert.model.multitask import MultiTaskModel

# bf16 keeps 8 significant bits (a relative rounding of 2^-8 = 0.4% per operation); through
# MiniLM's 6 layers that compounds to ~0.6% of the hidden states' norm, so 2% leaves margin
# while any real bug (a wrong mask, a dropped residual) is off by tens of percent.
BF16_RELATIVE = 0.02
FP32_ATOL = 1e-5
WORDS = ["the", "a", "movie", "film", "good", "bad", "is", "was", "not", "great", "dog", "cat"]
SENTENCES = [
    "It 's a lovely film with lovely performances by Buy and Accorsi .",
    "No one goes unindicted here , which is probably for the best .",
    "What is the statement of cash flows?",
    "Two black dogs are playing on the grass.",
    "A man is playing a flute.",
]


def _tiny_sst(tokenizer, rows: int = 24) -> EncodedTask:
    rng = np.random.default_rng(0)
    texts = [(" ".join(rng.choice(WORDS, size=rng.integers(1, 15))),) for _ in range(rows)]
    ids = [f"r{i}" for i in range(rows)]
    labels = rng.integers(0, 5, rows)
    data = TaskData("sst", "dev", None, ids, texts, labels, [])
    return encode_task(data, tokenizer, max_length=32, bi_encode=False)


@pytest.fixture
def tiny_sst_model(tiny_model):
    config = config_from_dict({"train": {"tasks": ["sst"]}, "heads": {"sst": {"pooling": "mean"}}})
    torch.manual_seed(0)
    return MultiTaskModel(tiny_model, config.head_specs()).eval()


@torch.no_grad()
def _outputs_by_row(model, data: EncodedTask, batches: list[np.ndarray]) -> torch.Tensor:
    out = torch.zeros(len(data), 5)
    for rows in batches:
        out[rows] = model("sst", data.batch(rows))
    return out


def test_length_grouped_and_sorted_batches_give_every_row_its_plain_output(
    tiny_sst_model, tiny_tokenizer
):
    """Grouping only changes which rows share a batch and how much padding they get; mean
    pooling over the mask makes any leak of padding into a row's output visible."""
    data = _tiny_sst(tiny_tokenizer)
    alone = _outputs_by_row(tiny_sst_model, data, [np.array([r]) for r in range(len(data))])
    lengths = data.lengths
    for group in (False, True):
        order = grouped_order(lengths, 8, np.random.default_rng(1), group=group, chunk=2)
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
        batched = _outputs_by_row(tiny_sst_model, data, batches)
        torch.testing.assert_close(batched, alone, atol=FP32_ATOL, rtol=FP32_ATOL)
    # Evaluation: length-sorted batches under torch.inference_mode.
    evaluated = predict(tiny_sst_model, data, batch_size=8).outputs
    torch.testing.assert_close(torch.from_numpy(evaluated), alone, atol=FP32_ATOL, rtol=FP32_ATOL)


def _padded_batch(tokenizer, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encodings = tokenizer.encode_batch(sentences)
    width = max(len(e.input_ids) for e in encodings)
    ids = torch.zeros(len(sentences), width, dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
    return ids, (ids != tokenizer.pad_id).long()


def _relative_error(fast: torch.Tensor, plain: torch.Tensor) -> float:
    return ((fast.float() - plain).norm() / plain.norm()).item()


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_bf16_autocast_matches_the_fp32_manual_path_on_minilm(minilm, attention):
    """The plain path (manual attention, fp32) against bf16 autocast with each attention."""
    model, tokenizer = minilm
    ids, mask = _padded_batch(tokenizer, SENTENCES)
    real = mask.bool()
    try:
        with torch.no_grad():
            model.set_attention("manual")
            plain = model(ids, mask)
            model.set_attention(attention)
            with torch.autocast("cpu", torch.bfloat16):
                fast = model(ids, mask)
    finally:
        model.set_attention("sdpa")
    hidden = _relative_error(fast.last_hidden_state[real], plain.last_hidden_state[real])
    assert hidden < BF16_RELATIVE
    assert _relative_error(fast.pooler_output, plain.pooler_output) < BF16_RELATIVE

    def mean_pool(h: torch.Tensor) -> torch.Tensor:
        return (h.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    cosine = F.cosine_similarity(
        mean_pool(fast.last_hidden_state), mean_pool(plain.last_hidden_state)
    )
    assert cosine.min().item() > 0.999


def test_bf16_autocast_training_gradients_match_fp32_on_minilm(minilm):
    """One loss and its gradient (eval mode: no dropout), fp32 against bf16 autocast."""
    model, tokenizer = minilm
    ids, mask = _padded_batch(tokenizer, SENTENCES[:3])
    target = torch.linspace(-1, 1, model.config.hidden_size)
    losses, grads = [], []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            pooled = model(ids, mask).pooler_output  # (B, H)
        loss = F.mse_loss(pooled.float(), target.expand_as(pooled))
        loss.backward()
        losses.append(loss.item())
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    model.zero_grad(set_to_none=True)
    assert abs(losses[1] - losses[0]) / losses[0] < BF16_RELATIVE
    assert F.cosine_similarity(grads[0], grads[1], dim=0).item() > 0.99


# -- the CPU training shortcuts: dropout mask, stacked projections, [CLS]-only last layer ---------


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_fast_dropout_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([1000, 1000]), p, torch.device("cpu")).float()
    # Each of the four 16-bit chunks of a 64-bit draw must be uniform (the sign bit included):
    # check the rate at every position modulo 4, to 5 standard deviations.
    tolerance = 5 * (p * (1 - p) / (keep.numel() / 4)) ** 0.5
    for offset in range(4):
        assert abs(keep.view(-1)[offset::4].mean().item() - (1 - p)) < tolerance
    # Neighbouring elements are independent: P(both kept) = (1 - p)^2.
    both = (keep.view(-1)[:-1] * keep.view(-1)[1:]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * ((1 - p) ** 2 / keep.numel()) ** 0.5 * 2


def test_fast_dropout_scales_kept_values_and_its_gradient_is_the_mask():
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.8)
    torch.manual_seed(1)
    torch.testing.assert_close(dropout(x, 0.2, training=True), y)  # seeded like nn.Dropout
    assert dropout(x, 0.2, training=False) is x
    assert dropout(x.bfloat16(), 0.2, training=True).dtype == torch.bfloat16
    assert (dropout(x, 1.0, training=True) == 0).all()


def test_stacked_projections_equal_separate_ones(tiny_model, tiny_config):
    from minbert.model.bert import BertSelfAttention

    ids = torch.randint(5, tiny_config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    stacked = tiny_model(ids, mask).last_hidden_state
    for module in tiny_model.modules():
        if isinstance(module, BertSelfAttention):
            module.stack_projections = False
    separate = tiny_model(ids, mask).last_hidden_state
    torch.testing.assert_close(stacked, separate, atol=FP32_ATOL, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_first_token_only_gives_the_full_pass_cls_state_and_gradients(
    tiny_model, tiny_config, impl
):
    tiny_model.set_attention(impl)
    ids = torch.randint(5, tiny_config.vocab_size, (4, 11))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    types = torch.randint(0, 2, ids.shape)
    results = []
    for first_only in (False, True):
        tiny_model.zero_grad()
        out = tiny_model(ids, mask, types, first_token_only=first_only)
        (out.last_hidden_state[:, 0].sum() + out.pooler_output.sum()).backward()
        grads = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
        results.append((out.last_hidden_state[:, 0], out.pooler_output, grads))
    (full_cls, full_pooled, full_grads), (cls, pooled, grads) = results
    assert len(grads) == len(full_grads)
    torch.testing.assert_close(cls, full_cls, atol=FP32_ATOL, rtol=1e-5)
    torch.testing.assert_close(pooled, full_pooled, atol=FP32_ATOL, rtol=1e-5)
    for got, want in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-4)


def test_cls_and_pooler_heads_ask_for_the_first_token_alone(tiny_model, tiny_config):
    seen = []
    real_forward = tiny_model.forward

    def spy(*args, first_token_only=False, **kwargs):
        seen.append(first_token_only)
        return real_forward(*args, first_token_only=first_token_only, **kwargs)

    tiny_model.forward = spy
    ids = torch.randint(5, tiny_config.vocab_size, (2, 6))
    segment = Segment(ids, torch.ones_like(ids), torch.zeros_like(ids))
    for how in ("cls", "pooler", "mean", "max", "mean+max"):
        encode(tiny_model, segment, how)
    assert seen == [True, True, False, False, False]
    tiny_model.first_token_shortcut = False
    encode(tiny_model, segment, "cls")
    assert seen[-1] is False


def test_the_allocator_setting_takes_on_glibc():
    import platform

    assert keep_freed_memory() == (
        platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    )


def test_packing_round_trips_the_real_tokens():
    keep = torch.zeros(3, 40, dtype=torch.bool)
    keep[0, :30], keep[1, :1], keep[2, :] = True, True, True  # 71 real tokens of 120
    packing = Packing.of(keep)
    states = torch.randn(3, 40, 5)
    packed = packing.pack(states)
    assert packed.shape == (packed_rows(71, 120), 5) == (120, 5)
    torch.testing.assert_close(packed[:71], states[keep])
    torch.testing.assert_close(packing.pad(packed), states)  # every row computed
    padded = packing.pad(packed, real_only=True)
    torch.testing.assert_close(padded[keep], states[keep])
    assert (padded[~keep] == 0).all()
    torch.testing.assert_close(packing.first(packed), states[:, :1])


def test_packed_row_counts_are_few_and_waste_little():
    assert packed_rows(0, 10) == 0
    assert packed_rows(1, 4096) == 64
    assert packed_rows(64, 4096) == 64
    assert packed_rows(65, 4096) == 128
    assert packed_rows(1025, 4096) == 1088
    assert packed_rows(3000, 4096) == 3072
    assert packed_rows(3000, 3010) == 3010
    sizes = {packed_rows(n, 4096) for n in range(1, 4097)}
    assert len(sizes) <= 64
    assert all(packed_rows(n, 10**6) - n <= max(63, n / 16) for n in range(1, 5000))


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
@pytest.mark.parametrize("first_only", [False, True])
def test_packed_batches_give_the_padded_pass_outputs_and_gradients(
    tiny_model, tiny_config, impl, first_only
):
    tiny_model.set_attention(impl)
    ids = torch.randint(5, tiny_config.vocab_size, (4, 40))
    mask = torch.ones_like(ids)
    mask[0, 3:], mask[1, 20:], mask[2, 7:], mask[3, 12:] = 0, 0, 0, 0
    assert packed_rows(int(mask.sum()), mask.numel()) == 64 < mask.numel()  # some padding too
    types = torch.randint(0, 2, ids.shape)
    results = []
    for packed in (False, True):
        tiny_model.pack_tokens = packed
        tiny_model.zero_grad()
        out = tiny_model(ids, mask, types, first_token_only=first_only)
        states = out.last_hidden_state if first_only else out.last_hidden_state[mask.bool()]
        (states.square().sum() + out.pooler_output.sum()).backward()
        grads = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
        results.append((states, out.pooler_output, grads))
    (want, want_pooled, want_grads), (got, got_pooled, got_grads) = results
    torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-5)
    torch.testing.assert_close(got_pooled, want_pooled, atol=FP32_ATOL, rtol=1e-5)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=FP32_ATOL, rtol=1e-4)


def test_training_attends_on_the_whole_padded_batch(tiny_model, tiny_config, monkeypatch):
    """Grouping in training would draw attention dropout's masks per group: another random
    path for every training run."""
    seen = []
    real_of = Packing.of
    monkeypatch.setattr(
        Packing, "of", lambda keep, grouped: seen.append(grouped) or real_of(keep, grouped)
    )
    ids = torch.randint(5, tiny_config.vocab_size, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    tiny_model.train()(ids, mask)
    tiny_model.eval()(ids, mask)
    assert seen == [False, True]


def test_attention_groups_cover_each_row_once_within_their_length_share():
    lengths = torch.tensor([5, 40, 12, 3, 33, 20, 7, 40, 30, 31, 1])
    groups = attention_groups(lengths)
    rows = torch.cat([g.rows for g in groups])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert [g.length for g in groups] == sorted((g.length for g in groups), reverse=True)
    for group in groups:
        member = lengths[group.rows]
        assert member.max() == group.length
        assert (member >= GROUP_LENGTH_SHARE * group.length).all()
    assert [g.rows.tolist() for g in groups[:2]] == [[1, 7, 4, 9, 8], [5]]
    assert attention_groups(torch.tensor([30, 25, 28, 23])) == ()  # one group: none


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
@pytest.mark.parametrize("first_only", [False, True])
def test_attention_per_length_group_gives_the_padded_attention_outputs_and_gradients(
    tiny_model, tiny_config, impl, first_only
):
    tiny_model.set_attention(impl)
    lengths = torch.tensor([3, 40, 7, 12, 38, 1, 25, 40])
    ids = torch.randint(5, tiny_config.vocab_size, (8, 40))
    mask = (torch.arange(40)[None] < lengths[:, None]).long()
    assert len(Packing.of(mask.bool()).groups) > 3
    results = []
    for grouped in (False, True):
        tiny_model.group_attention = grouped
        tiny_model.zero_grad()
        out = tiny_model(ids, mask, first_token_only=first_only)
        states = out.last_hidden_state if first_only else out.last_hidden_state[mask.bool()]
        (states.square().sum() + out.pooler_output.sum()).backward()
        grads = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
        results.append((states, grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-5)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads, strict=True):  # fp32 sums in another order
        torch.testing.assert_close(g, w, atol=FP32_ATOL * max(1.0, w.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "cosine"])
def test_bi_encoded_evaluation_encodes_each_distinct_sentence_once(
    tiny_model, tiny_tokenizer, kind
):
    rng = np.random.default_rng(1)
    pool = [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(9)]
    pairs = [(pool[rng.integers(9)], pool[rng.integers(9)]) for _ in range(30)]  # repeats
    data = TaskData("quora", "dev", None, [f"q{i}" for i in range(30)], pairs, None, [])
    encoded = encode_task(data, tiny_tokenizer, max_length=32, bi_encode=True)
    config = config_from_dict(
        {
            "train": {"tasks": ["quora"]},
            "heads": {"quora": {"encoding": "bi", "pooling": "mean", "kind": kind}},
        }
    )
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_model, config.head_specs()).eval()
    calls = []
    real_forward = tiny_model.forward

    def counting(input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return real_forward(input_ids, *args, **kwargs)

    tiny_model.forward = counting
    got = predict(model, encoded, batch_size=8)
    distinct = len({s for pair in pairs for s in pair})
    assert sum(calls) == distinct < 60  # every distinct sentence once, not 2 per pair
    with torch.no_grad():
        want = model("quora", encoded.batch(np.arange(30)))
    np.testing.assert_allclose(got.outputs, want.numpy(), atol=1e-5, rtol=1e-5)
