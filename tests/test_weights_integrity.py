"""A damaged pretrained directory is one WeightsError naming the file, raised at load.

Each test damages a copy of a good tiny directory in one way: files cut short or garbled,
config fields missing or wrong, shapes, dtypes and values that disagree with config.json, and
vocabularies that disagree with themselves, the config or the embeddings.
"""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from minbert.model.bert import BertModel
from minbert.model.loading import (
    SIZE_FIELDS,
    WeightsError,
    check_state,
    check_vocab,
    export_pretrained,
    load_pretrained,
    read_config,
    read_json,
    read_safetensors,
)


@pytest.fixture(scope="module")
def good_dir(tiny_config, tiny_tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = BertModel(tiny_config).eval()
    return export_pretrained(model, tiny_tokenizer, tmp_path_factory.mktemp("good") / "tiny")


@pytest.fixture
def model_dir(good_dir, tmp_path):
    return shutil.copytree(good_dir, tmp_path / "tiny")


def load_error(directory, *fragments) -> str:
    """The load's WeightsError message, checked to contain every fragment."""
    with pytest.raises(WeightsError) as info:
        load_pretrained(directory)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return path


def edit_weights(directory, edit):
    path = directory / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)
    return path


def cut(path, size):
    path.write_bytes(path.read_bytes()[:size])


def test_good_directory_loads(model_dir, tiny_config):
    model, tokenizer = load_pretrained(model_dir)
    assert model.config == tiny_config and len(tokenizer) == tiny_config.vocab_size


# config.json


def test_config_missing(model_dir):
    (model_dir / "config.json").unlink()
    load_error(model_dir, f"{model_dir}: no config.json")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: "", "is empty"),
        (lambda text: " \n", "is empty"),
        (lambda text: "[1, 2]", "must be a JSON object, not an array"),
        (lambda text: "null", "must be a JSON object, not null"),
    ],
    ids=["cut-short", "empty", "blank", "array", "null"],
)
def test_config_not_a_json_object(model_dir, damage, reason):
    path = model_dir / "config.json"
    path.write_text(damage(path.read_text()))
    load_error(model_dir, path, reason)


def test_config_not_utf8(model_dir):
    path = model_dir / "config.json"
    path.write_bytes(b'{"hidden_size": "\xff"}')
    load_error(model_dir, path, "cannot read the model config")


@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_config_size_field_missing(model_dir, field):
    path = edit_config(model_dir, **{field: None})
    load_error(model_dir, path, f"{field} is missing")


@pytest.mark.parametrize("value", ["32", 32.0, 0, -4, True, None, [32]])
@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_config_size_field_of_the_wrong_type(model_dir, field, value):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, field: value}))
    load_error(model_dir, path, f"{field} must be a positive integer, not {value!r}")


def test_config_lists_every_bad_field(model_dir):
    path = edit_config(model_dir, hidden_size=None, type_vocab_size="2")
    load_error(model_dir, path, "hidden_size is missing", "type_vocab_size must be")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"num_attention_heads": 5}, "must be a multiple of num_attention_heads (5)"),
        ({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob must be a number in [0, 1)"),
        ({"attention_probs_dropout_prob": 1.5}, "attention_probs_dropout_prob must be"),
        ({"layer_norm_eps": 0}, "layer_norm_eps must be a positive number"),
        ({"pad_token_id": 28}, "pad_token_id must be a token id below vocab_size"),
        ({"hidden_act": 3}, "hidden_act must be a string"),
        ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
        ({"position_embedding_type": "relative_key"}, "only absolute position embeddings"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not 'bert'"),
    ],
    ids=lambda x: "-".join(x) if isinstance(x, dict) else None,
)
def test_config_values_out_of_range(model_dir, changes, reason):
    path = edit_config(model_dir, **changes)
    load_error(model_dir, path, reason)


# The weights file


@pytest.mark.parametrize("size", [0, 10, "half", -4], ids=["empty", "10-bytes", "half", "data"])
def test_safetensors_cut_short(model_dir, size):
    path = model_dir / "model.safetensors"
    cut(path, path.stat().st_size // 2 if size == "half" else size)
    load_error(model_dir, path, "not a readable safetensors file", "cut short")


def test_safetensors_header_garbled(model_dir):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"#" * header_size + data[8 + header_size :])
    load_error(model_dir, path, "not a readable safetensors file", "invalid JSON in header")


def test_safetensors_header_lies_about_a_tensor(model_dir):
    """A header whose offsets leave the data region short of one tensor's bytes."""
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    name = "pooler.dense.bias"
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 4]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_size :])
    load_error(model_dir, path, "not a readable safetensors file")


@pytest.mark.parametrize("size", [0, 10, "half"], ids=["empty", "10-bytes", "half"])
def test_pytorch_bin_cut_short(model_dir, size):
    state = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    path = model_dir / "pytorch_model.bin"
    torch.save(state, path)
    cut(path, path.stat().st_size // 2 if size == "half" else size)
    load_error(model_dir, path, "not a readable plain tensor checkpoint", "cut short")


def test_pytorch_bin_with_an_entry_that_is_not_a_tensor(model_dir):
    state = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    path = model_dir / "pytorch_model.bin"
    torch.save({**state, "step": 3}, path)
    load_error(model_dir, path, "entries that are not tensors: step")


# Shapes, dtypes and values


def test_shape_names_the_weights_file_and_config(model_dir):
    weights = edit_weights(
        model_dir,
        lambda s: s.update({"embeddings.word_embeddings.weight": torch.zeros(30, 32)}),
    )
    load_error(
        model_dir,
        f"cannot load {weights} into the encoder built from {model_dir / 'config.json'}",
        "embeddings.word_embeddings.weight: checkpoint (30, 32) vs model (28, 32)",
    )


def test_config_sizes_that_disagree_with_the_weights(model_dir):
    edit_config(model_dir, intermediate_size=48)
    load_error(model_dir, model_dir / "model.safetensors", "intermediate.dense.weight")


def test_integer_tensor_is_refused(model_dir):
    weights = edit_weights(
        model_dir, lambda s: s.update({"pooler.dense.bias": torch.zeros(32, dtype=torch.int64)})
    )
    load_error(model_dir, weights, "not floating point: pooler.dense.bias (torch.int64)")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_names_the_tensor(model_dir, value):
    name = "encoder.layer.1.output.dense.weight"

    def poison(state):
        state[name][3, 5] = value

    weights = edit_weights(model_dir, poison)
    load_error(model_dir, weights, f"NaN or infinite values: {name} (1 of 2048 values)")


def test_half_precision_weights_load_even_where_a_sum_overflows(model_dir):
    """Large finite values are not mistaken for infinite ones (their float16 sum is inf)."""

    def to_half(state):
        state.update({k: v.half() for k, v in state.items()})
        state["pooler.dense.bias"].fill_(60000.0)

    edit_weights(model_dir, to_half)
    model, _ = load_pretrained(model_dir)
    assert model.pooler.dense.bias[0] == 60000.0


# The vocabulary


def edit_vocab(directory, edit):
    path = directory / "vocab.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("".join(line + "\n" for line in edit(lines)), encoding="utf-8")
    return path


def test_vocab_missing(model_dir):
    (model_dir / "vocab.txt").unlink()
    load_error(model_dir, f"{model_dir}: no vocab.txt")


def test_vocab_empty(model_dir):
    (model_dir / "vocab.txt").write_text("")
    load_error(model_dir, model_dir / "vocab.txt", "the vocabulary is empty")


def test_vocab_not_utf8(model_dir):
    path = model_dir / "vocab.txt"
    path.write_bytes(path.read_bytes().replace(b"movie", b"mov\xe9e"))
    load_error(model_dir, path, "not UTF-8 text (line 8")


def test_vocab_duplicate_token(model_dir):
    path = edit_vocab(model_dir, lambda lines: [*lines[:-1], "movie"])
    load_error(model_dir, path, "token 'movie' is on line 8 and again on line 28")


@pytest.mark.parametrize("token", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
def test_vocab_lacks_a_special_token(model_dir, token):
    path = edit_vocab(model_dir, lambda lines: [t + "x" if t == token else t for t in lines])
    load_error(model_dir, path, f"needs the special tokens {token}")


@pytest.mark.parametrize(
    "edit, count, reason",
    [
        (lambda lines: lines[:-3], 25, "cut short"),
        (lambda lines: [*lines, "extra"], 29, "past the embedding table"),
        (lambda lines: [*lines, ""], 29, "past the embedding table"),
    ],
    ids=["cut-short", "one-more", "blank-line"],
)
def test_vocab_size_disagrees_with_config_and_embeddings(model_dir, edit, count, reason):
    path = edit_vocab(model_dir, edit)
    load_error(
        model_dir,
        f"{path}: {count} tokens, but vocab_size is 28 in {model_dir / 'config.json'}",
        f"{model_dir / 'model.safetensors'} has as many embedding rows",
        reason,
    )


def test_vocab_pad_not_at_pad_token_id(model_dir):
    path = edit_vocab(model_dir, lambda lines: [lines[1], lines[0], *lines[2:]])
    load_error(model_dir, path, "[PAD] is token 1, but pad_token_id is 0")


def test_vocab_with_windows_line_endings_loads(model_dir):
    path = model_dir / "vocab.txt"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    _, tokenizer = load_pretrained(model_dir)
    assert tokenizer.vocab["[PAD]"] == 0 and len(tokenizer) == 28


# tokenizer_config.json


def test_tokenizer_config_not_json(model_dir):
    path = model_dir / "tokenizer_config.json"
    cut(path, 10)
    load_error(model_dir, path, "the tokenizer config is not valid JSON")


def test_tokenizer_config_lowercase_not_a_bool(model_dir):
    path = model_dir / "tokenizer_config.json"
    path.write_text(json.dumps({"do_lower_case": "false"}))
    load_error(model_dir, path, "do_lower_case must be true or false, not 'false'")


def test_tokenizer_config_is_optional(model_dir):
    (model_dir / "tokenizer_config.json").unlink()
    assert load_pretrained(model_dir)[1].lowercase


# The checks on their own, as a trained model directory uses them


def test_checks_serve_other_model_directories(model_dir, tiny_config):
    encoder_json = model_dir / "encoder.json"
    (model_dir / "config.json").rename(encoder_json)
    assert read_config(encoder_json, "encoder config") == tiny_config
    state = read_safetensors(model_dir / "model.safetensors")
    model = BertModel(tiny_config)
    check_state(state, model.state_dict(), "weights.safetensors")
    check_vocab(model_dir / "vocab.txt", tiny_config, encoder_json)
    with pytest.raises(WeightsError, match="encoder config is empty"):
        encoder_json.write_text("")
        read_json(encoder_json, "encoder config")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="cannot load weights.safetensors into the model"):
        check_state(state, model.state_dict(), "weights.safetensors")
