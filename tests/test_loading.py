import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from minbert.model.loading import WeightsError, export_pretrained, load_pretrained


@pytest.fixture
def tiny_dir(tiny_model, tiny_tokenizer, tmp_path):
    return export_pretrained(tiny_model, tiny_tokenizer, tmp_path / "tiny")


def _rewrite(directory, edit):
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")


def test_packaged_model_loads():
    import minbert

    model, tokenizer = minbert.load_pretrained("minilm-l6")
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert len(tokenizer) == 30522


def test_unknown_model_name_lists_known_names():
    with pytest.raises(WeightsError, match="minilm-l6"):
        load_pretrained("bert-base-uncased-not-here")


def test_missing_key_is_named(tiny_dir):
    _rewrite(tiny_dir, lambda s: s.pop("encoder.layer.1.output.dense.weight"))
    with pytest.raises(
        WeightsError, match=r"missing keys: encoder\.layer\.1\.output\.dense\.weight"
    ):
        load_pretrained(tiny_dir)


def test_unexpected_key_is_named(tiny_dir):
    _rewrite(tiny_dir, lambda s: s.update({"encoder.layer.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(WeightsError, match=r"unexpected keys: encoder\.layer\.9\.extra\.weight"):
        load_pretrained(tiny_dir)


def test_wrong_shape_is_named(tiny_dir):
    _rewrite(tiny_dir, lambda s: s.update({"pooler.dense.bias": torch.zeros(7)}))
    with pytest.raises(
        WeightsError, match=r"pooler\.dense\.bias: checkpoint \(7,\) vs model \(32,\)"
    ):
        load_pretrained(tiny_dir)


def test_bert_prefix_and_heads_are_handled(tiny_dir, tiny_model):
    """A full HF BertForPreTraining checkpoint: `bert.` prefix, MLM/NSP heads, position_ids."""

    def to_pretraining_layout(state):
        for key in list(state):
            state["bert." + key] = state.pop(key)
        state["cls.predictions.bias"] = torch.zeros(3)
        state["cls.seq_relationship.weight"] = torch.zeros(2, 32)
        state["bert.embeddings.position_ids"] = torch.arange(64)[None]

    _rewrite(tiny_dir, to_pretraining_layout)
    loaded, _ = load_pretrained(tiny_dir)
    for key, value in tiny_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_pytorch_bin_is_read_with_weights_only(tiny_dir, tiny_model):
    (tiny_dir / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), tiny_dir / "pytorch_model.bin")
    loaded, _ = load_pretrained(tiny_dir)
    torch.testing.assert_close(loaded.pooler.dense.weight, tiny_model.pooler.dense.weight)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/minbert-pwned",))


def test_pickle_that_runs_code_is_refused(tiny_dir, tmp_path):
    (tiny_dir / "model.safetensors").unlink()
    with open(tiny_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Exploit()}, f)
    with pytest.raises(WeightsError, match="refused"):
        load_pretrained(tiny_dir)


def test_missing_files_are_named(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no model.safetensors or pytorch_model.bin"):
        load_pretrained(tiny_dir)
    (tiny_dir / "config.json").unlink()
    with pytest.raises(WeightsError, match="no config.json"):
        load_pretrained(tiny_dir)


def test_non_bert_model_type_is_refused(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(WeightsError, match="gpt2"):
        load_pretrained(tiny_dir)
