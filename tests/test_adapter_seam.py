"""The adapter seam: a wrapper around an encoder nn.Linear takes effect on every attention
path (the stacked QKV projection included), padded and packed, by exactly its delta."""

import copy

import pytest
import torch
from torch import nn

from minbert.model.bert import BertModel

LINEARS = ("query", "key", "value")


class LowRankDelta(nn.Linear):
    """A stand-in for LoRA: the base layer's output plus ``x @ (B @ A).T`` for known A, B."""

    def __init__(self, base: nn.Linear, delta: torch.Tensor):
        super().__init__(base.in_features, base.out_features, dtype=base.weight.dtype)
        self.load_state_dict(base.state_dict())
        self.register_buffer("delta", delta)  # (out, in) = B @ A
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x) + x @ self.delta.T


def _low_rank(size: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    b = torch.randn(size, 2, generator=generator, dtype=dtype)
    a = torch.randn(2, size, generator=generator, dtype=dtype)
    return 0.3 * b @ a


def _wrap(model: BertModel, layer: int, name: str, delta: torch.Tensor) -> LowRankDelta:
    attention = model.encoder.layer[layer].attention.self
    wrapper = LowRankDelta(getattr(attention, name), delta)
    setattr(attention, name, wrapper)
    return wrapper


def _inputs(padded: bool):
    torch.manual_seed(3)
    ids = torch.randint(5, 25, (3, 7))
    mask = torch.ones_like(ids)
    if padded:  # rows of 7, 4 and 2 real tokens: the model packs them
        mask[1, 4:] = 0
        mask[2, 2:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", LINEARS)
def test_a_linear_wrapper_changes_the_output_by_exactly_its_delta(
    tiny_config, impl, padded, training, name
):
    torch.manual_seed(0)
    base = BertModel(tiny_config).double()
    base.set_attention(impl)
    for m in base.modules():  # no dropout: train mode differs by the path taken alone
        if hasattr(m, "p"):
            m.p = 0.0
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    base.train(training)
    delta = _low_rank(tiny_config.hidden_size)
    wrapped, expected = copy.deepcopy(base), copy.deepcopy(base)
    last = tiny_config.num_hidden_layers - 1
    wrapper = _wrap(wrapped, last, name, delta)
    with torch.no_grad():  # the same change written into the plain layer's weight
        getattr(expected.encoder.layer[last].attention.self, name).weight += delta
    ids, mask = _inputs(padded)
    for first_only in (False, True):
        got = wrapped(ids, mask, first_token_only=first_only).last_hidden_state
        want = expected(ids, mask, first_token_only=first_only).last_hidden_state
        plain = base(ids, mask, first_token_only=first_only).last_hidden_state
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        assert (got - plain).abs().max() > 1e-3  # the delta did change the output
    assert wrapper.calls == 2


def test_a_zero_delta_wrapper_on_every_layer_changes_nothing(tiny_config):
    torch.manual_seed(0)
    model = BertModel(tiny_config).eval()
    ids, mask = _inputs(padded=True)
    before = model(ids, mask).last_hidden_state
    zero = torch.zeros(tiny_config.hidden_size, tiny_config.hidden_size)
    wrappers = [_wrap(model, i, n, zero) for i in range(2) for n in LINEARS]
    after = model(ids, mask).last_hidden_state
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    assert all(w.calls == 1 for w in wrappers)
