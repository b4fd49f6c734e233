import dataclasses

import pytest
import torch

from minbert.model.bert import BertConfig, BertModel


def _batch(vocab_size: int, lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0 after each sequence
    ids[:, 0] = 2  # [CLS]
    return ids, mask


def test_output_shapes(tiny_model, tiny_config):
    ids, mask = _batch(tiny_config.vocab_size, [7, 5, 3])
    out = tiny_model(ids, mask)
    assert out.last_hidden_state.shape == (3, 7, tiny_config.hidden_size)
    assert out.pooler_output.shape == (3, tiny_config.hidden_size)
    assert out.pooler_output.abs().max() <= 1.0  # tanh


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_padding_never_changes_real_tokens(tiny_model, tiny_config, impl):
    tiny_model.set_attention(impl)
    ids, mask = _batch(tiny_config.vocab_size, [6])
    alone = tiny_model(ids, mask).last_hidden_state
    padded_ids = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    padded_ids[0, 6:] = torch.randint(5, tiny_config.vocab_size, (9,))  # garbage under the mask
    padded_mask = torch.cat([mask, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    padded = tiny_model(padded_ids, padded_mask).last_hidden_state
    torch.testing.assert_close(padded[:, :6], alone, atol=1e-5, rtol=1e-5)


def test_attention_paths_are_equal(tiny_model, tiny_config):
    ids, mask = _batch(tiny_config.vocab_size, [9, 4, 1, 6], seed=3)
    types = torch.randint(0, 2, ids.shape)
    tiny_model.set_attention("manual")
    manual = tiny_model(ids, mask, types)
    tiny_model.set_attention("sdpa")
    fast = tiny_model(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(
        fast.last_hidden_state[real], manual.last_hidden_state[real], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(fast.pooler_output, manual.pooler_output, atol=1e-5, rtol=1e-5)


def test_attention_paths_have_equal_gradients(tiny_model, tiny_config):
    ids, mask = _batch(tiny_config.vocab_size, [8, 3], seed=4)
    grads = []
    for impl in ("manual", "sdpa"):
        tiny_model.zero_grad()
        tiny_model.set_attention(impl)
        tiny_model(ids, mask).pooler_output.sum().backward()
        grads.append(tiny_model.encoder.layer[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_cpu_training_takes_the_manual_path_even_without_dropout(tiny_config, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dropout_p"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr("minbert.model.bert.F.scaled_dot_product_attention", counting)
    config = dataclasses.replace(tiny_config, attention_probs_dropout_prob=0.0)
    model = BertModel(config, attention="sdpa")
    ids, mask = _batch(config.vocab_size, [5, 4])  # lengths close enough for one attention group
    model.train()(ids, mask)  # sdpa's CPU training step is the slower one
    assert calls == []
    model.eval()(ids, mask)  # evaluation keeps sdpa's fused kernel
    assert calls == [0.0] * config.num_hidden_layers


def test_unknown_attention_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="sdpa"):
        tiny_model.set_attention("flash")


def test_token_type_ids_default_to_zero(tiny_model, tiny_config):
    ids, mask = _batch(tiny_config.vocab_size, [5, 5])
    a = tiny_model(ids, mask).last_hidden_state
    b = tiny_model(ids, mask, torch.zeros_like(ids)).last_hidden_state
    torch.testing.assert_close(a, b)


def test_too_long_input_is_an_error(tiny_model, tiny_config):
    ids = torch.ones(1, tiny_config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_model(ids, torch.ones_like(ids))


def test_parameter_names_follow_huggingface(tiny_model):
    names = set(tiny_model.state_dict())
    for expected in (
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.key.bias",
        "encoder.layer.0.attention.output.dense.weight",
        "encoder.layer.0.attention.output.LayerNorm.bias",
        "encoder.layer.1.intermediate.dense.weight",
        "encoder.layer.1.output.dense.weight",
        "encoder.layer.1.output.LayerNorm.weight",
        "pooler.dense.weight",
    ):
        assert expected in names
    assert not any("position_ids" in n for n in names)


def test_bad_config_values():
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="swish")


def test_save_load_round_trip(tiny_model, tiny_tokenizer, tiny_config, tmp_path):
    from minbert.model.loading import export_pretrained, load_pretrained

    export_pretrained(tiny_model, tiny_tokenizer, tmp_path / "tiny")
    loaded, tok = load_pretrained(tmp_path / "tiny")
    assert loaded.config == tiny_config
    ids, mask = _batch(tiny_config.vocab_size, [7, 2])
    torch.testing.assert_close(
        loaded(ids, mask).last_hidden_state, tiny_model(ids, mask).last_hidden_state
    )
    assert tok.vocab == tiny_tokenizer.vocab
