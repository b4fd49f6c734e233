"""The adapter seam: a wrapper around any encoder nn.Linear (the LoRA pattern) takes effect on
every attention path (the stacked QKV projection included), padded and packed, in train and
eval mode, with and without ``first_token_only``, by exactly its delta."""

import copy

import pytest
import torch
from torch import nn

from minbert.model.bert import BertModel

QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
# Every nn.Linear of a layer, by its path under encoder.layer.{i}.
LAYER_LINEARS = (*QKV, "attention.output.dense", "intermediate.dense", "output.dense")


class AddDelta(nn.Linear):
    """A stand-in for LoRA: the base layer's output plus ``x @ weight_delta.T + bias_delta``
    for known deltas (zero unless given); counts its calls."""

    def __init__(self, base: nn.Linear, weight_delta=None, bias_delta=None):
        super().__init__(base.in_features, base.out_features, dtype=base.weight.dtype)
        self.load_state_dict(base.state_dict())
        if weight_delta is None:
            weight_delta = torch.zeros_like(base.weight)
        if bias_delta is None:
            bias_delta = torch.zeros_like(base.bias)
        self.register_buffer("weight_delta", weight_delta.detach().clone())  # (out, in)
        self.register_buffer("bias_delta", bias_delta.detach().clone())  # (out,)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x) + x @ self.weight_delta.T + self.bias_delta


def _model(config, impl: str, training: bool) -> BertModel:
    """A float64 tiny model on ``impl``, in train or eval mode, with every dropout off (so that
    train mode differs from eval by the code path taken alone)."""
    torch.manual_seed(0)
    model = BertModel(config).double()
    model.set_attention(impl)
    for m in model.modules():
        if hasattr(m, "p"):
            m.p = 0.0
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    return model.train(training)


def _linear(model: BertModel, layer: int, path: str) -> nn.Linear:
    return model.encoder.layer[layer].get_submodule(path)


def _wrap(model: BertModel, layer: int, path: str, **deltas) -> AddDelta:
    parent_path, _, name = path.rpartition(".")
    parent = model.encoder.layer[layer].get_submodule(parent_path)
    wrapper = AddDelta(getattr(parent, name), **deltas)
    setattr(parent, name, wrapper)
    return wrapper


def _low_rank(size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    b = torch.randn(size, 2, generator=generator, dtype=torch.float64)
    a = torch.randn(2, size, generator=generator, dtype=torch.float64)
    return 0.3 * b @ a  # (out, in) = B @ A, rank 2


def _inputs(padded: bool):
    torch.manual_seed(3)
    ids = torch.randint(5, 25, (3, 7))
    mask = torch.ones_like(ids)
    if padded:  # rows of 7, 4 and 2 real tokens: the model packs them
        mask[1, 4:] = 0
        mask[2, 2:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def _run(model: BertModel, ids, mask, first_only: bool, padded: bool) -> torch.Tensor:
    out = model(ids, mask, first_token_only=first_only)
    if padded and not first_only:  # the packed pass ran: it leaves zeros on padding positions
        assert not out.last_hidden_state[2, 2:].any()
    return torch.cat([out.last_hidden_state.flatten(), out.pooler_output.flatten()])


def _assert_wrapped_equals_merged(wrapped, expected, base, padded: bool) -> None:
    """The wrapped model equals the one with the delta merged in, and differs from the base,
    on the full pass and on the [CLS]-only last layer."""
    ids, mask = _inputs(padded)
    for first_only in (False, True):
        got = _run(wrapped, ids, mask, first_only, padded)
        want = _run(expected, ids, mask, first_only, padded)
        plain = _run(base, ids, mask, first_only, padded)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        assert (got - plain).abs().max() > 1e-3  # the delta did change the output


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("layers", ["last", "all"])
def test_zero_delta_wrappers_are_called_and_change_nothing(
    tiny_config, impl, padded, training, layers
):
    base = _model(tiny_config, impl, training)
    wrapped = copy.deepcopy(base)
    last = tiny_config.num_hidden_layers - 1
    chosen = [last] if layers == "last" else range(tiny_config.num_hidden_layers)
    wrappers = [_wrap(wrapped, i, path) for i in chosen for path in LAYER_LINEARS]
    ids, mask = _inputs(padded)
    for first_only in (False, True):
        got = _run(wrapped, ids, mask, first_only, padded)
        want = _run(base, ids, mask, first_only, padded)
        # the same sums, as separate products instead of one stacked one
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert [w.calls for w in wrappers] == [2] * len(wrappers)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("path", LAYER_LINEARS)
def test_a_low_rank_delta_equals_the_merged_weight(tiny_config, impl, padded, training, path):
    base = _model(tiny_config, impl, training)
    delta = _low_rank(tiny_config.hidden_size)
    if path == "intermediate.dense":
        delta = delta.repeat(2, 1)  # (I, H)
    elif path == "output.dense":
        delta = delta.repeat(1, 2)  # (H, I)
    wrapped, expected = copy.deepcopy(base), copy.deepcopy(base)
    last = tiny_config.num_hidden_layers - 1
    wrapper = _wrap(wrapped, last, path, weight_delta=delta)
    with torch.no_grad():  # the same change written into the plain layer's weight
        _linear(expected, last, path).weight += delta
    _assert_wrapped_equals_merged(wrapped, expected, base, padded)
    assert wrapper.calls == 2


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_a_constant_delta_on_the_last_value_equals_a_larger_bias(
    tiny_config, impl, padded, training
):
    base = _model(tiny_config, impl, training)
    d = torch.linspace(-0.5, 0.5, tiny_config.hidden_size, dtype=torch.float64)
    wrapped, expected = copy.deepcopy(base), copy.deepcopy(base)
    last = tiny_config.num_hidden_layers - 1
    wrapper = _wrap(wrapped, last, "attention.self.value", bias_delta=d)
    with torch.no_grad():
        _linear(expected, last, "attention.self.value").bias += d
    _assert_wrapped_equals_merged(wrapped, expected, base, padded)
    assert wrapper.calls == 2
