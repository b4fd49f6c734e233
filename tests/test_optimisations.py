"""Each speed optimisation leaves the outputs of the plain path unchanged, within the tolerance
of the dtype it computes in: length-grouped and length-sorted batches, evaluation under
``torch.inference_mode``, bf16 autocast (alone and with sdpa attention). The sdpa and manual
attention paths are compared in tests/test_bert.py.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minbert.config import config_from_dict
from minbert.data.batching import EncodedTask, encode_task, grouped_order
from minbert.data.io import TaskData
from minbert.eval.evaluate import predict
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
    return MultiTaskModel(tiny_model, config).eval()


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
