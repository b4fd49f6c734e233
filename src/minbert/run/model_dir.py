"""Saving and loading a trained model directory (``RUN/best/``), written atomically.

A model directory holds everything needed to rebuild the model without the pretrained
package: ``model.safetensors`` (encoder + heads), ``config.toml`` (the run's resolved
config), ``encoder.json`` (the BERT architecture), ``vocab.txt`` and ``meta.json``.

An adapter run with a frozen base stores only what changed (adapter, heads) and in
``meta.json`` the base it changed: ``model.name`` of its config and a fingerprint of the base
weights, checked when the model is rebuilt from that base.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import torch

from minbert.config import Config, load_config
from minbert.model.adapters import is_base_parameter
from minbert.model.bert import BertModel
from minbert.model.loading import (
    WeightsError,
    check_state,
    check_vocab,
    load_pretrained,
    read_config,
    read_json,
    read_safetensors,
    write_safetensors,
)
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.objectives.pretraining import objective_heads
from minbert.run.atomic import recover, swap_in
from minbert.run.layout import RunDir
from minbert.run.manifest import read_checked, verify, write_manifest


def save_model_dir(
    model: MultiTaskModel, tokenizer: Tokenizer, config: Config, out: Path, meta: dict
) -> None:
    """Write the directory next to ``out``, then swap it in, so ``out`` is never half-written."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if config.adapter.freezes_base:  # the base is referenced, not copied
        meta = {**meta, "base": {"model": config.model.name, "fingerprint": fingerprint(state)}}
        state = {k: v for k, v in state.items() if not is_base_parameter(k)}
    write_safetensors(state, tmp / "model.safetensors")
    (tmp / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    (tmp / "encoder.json").write_text(json.dumps(model.encoder.config.to_hf_dict(), indent=2))
    shutil.copyfile(tokenizer.vocab_file, tmp / "vocab.txt")
    (tmp / "meta.json").write_text(
        json.dumps(
            {
                **meta,
                "lowercase": tokenizer.lowercase,
                "tasks": model.tasks,
                "objective_heads": list(model.objective_heads),
            },
            indent=2,
        )
    )
    write_manifest(tmp)
    swap_in(tmp, out)


def fingerprint(state: dict[str, torch.Tensor], as_saved: bool = False) -> str:
    """sha256 of the base weights in ``state`` (names, shapes and values). Floating tensors
    are hashed as float32, the dtype base weights are loaded in, so a run whose model was cast
    (to float64, say) still names the base it started from. ``as_saved``: the tensors as
    they are, dtype in the hash, as runs before commit dfdf00e wrote it (still accepted)."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if is_base_parameter(k)):
        tensor = state[key].detach().cpu()
        if as_saved:
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        else:
            tensor = tensor.float() if tensor.is_floating_point() else tensor
            digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        tensor = tensor.contiguous()
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def find_model_dir(run_or_dir: str | Path) -> Path:
    """Accept a run folder (uses its ``best/``) or a model directory itself."""
    path = Path(run_or_dir)
    best = recover(RunDir(path).best)
    for candidate in (path, best):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.toml").is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no trained model here (expected {path}/best/model.safetensors); "
        "train one with `minbert train --out RUN`"
    )


def load_model_dir(run_or_dir: str | Path) -> tuple[MultiTaskModel, Tokenizer, Config]:
    """The model, tokenizer and config saved in a model directory, verified first."""
    model_dir = find_model_dir(run_or_dir)
    advice = (
        f"The model in {model_dir} cannot be used; train it again "
        f"(`minbert train --config {model_dir / 'config.toml'} --out NEW_RUN`)"
    )
    verify(model_dir, advice)
    config = read_checked(model_dir / "config.toml", load_config, advice)
    meta = read_checked(model_dir / "meta.json", functools.partial(read_json, what="meta"), advice)
    encoder_json = model_dir / "encoder.json"
    encoder_config = read_checked(encoder_json, read_config, advice)
    base = meta.get("base")
    if base:  # an adapter run: its base, loaded as the run loaded it
        encoder, base_tokenizer = load_pretrained(
            base["model"],
            config.model.attention,
            hidden_dropout=encoder_config.hidden_dropout_prob,
            attention_dropout=encoder_config.attention_probs_dropout_prob,
        )
        if encoder.config != encoder_config:
            raise WeightsError(
                f"{model_dir}: the base model {base['model']!r} is not the architecture of "
                f"{encoder_json}; the adapter was trained on another model"
            )
        saved_vocab = Tokenizer(model_dir / "vocab.txt").vocab
        if base_tokenizer.vocab != saved_vocab:
            raise WeightsError(
                f"{model_dir}: the vocabulary of its base {base['model']!r} is not "
                f"{model_dir / 'vocab.txt'}; the adapter was trained on another model"
            )
    else:
        encoder = BertModel(encoder_config, attention=config.model.attention)
    extra = objective_heads(config, encoder) if meta.get("objective_heads") else {}
    model = MultiTaskModel(encoder, config.head_specs(meta["tasks"]), extra, config.adapter)
    weights = model_dir / "model.safetensors"
    state = read_checked(weights, read_safetensors, advice)
    expected = model.state_dict()
    if base:
        want = base["fingerprint"]
        if want != fingerprint(expected) and want != fingerprint(expected, as_saved=True):
            raise WeightsError(
                f"{model_dir}: the weights of its base {base['model']!r} are not the ones the "
                "adapter was trained on (the base changed since); train the adapter again"
            )
        expected = {k: v for k, v in expected.items() if not is_base_parameter(k)}
    # every way the folder can disagree with itself, named (names, shapes, vocabulary)
    check_state(state, expected, str(weights), f"the model of {encoder_json}")
    check_vocab(model_dir / "vocab.txt", encoder_config, encoder_json, weights)
    model.load_state_dict(state, strict=not base)
    tokenizer = Tokenizer(
        model_dir / "vocab.txt", meta.get("lowercase", True), ptb_text=config.data.ptb_text
    )
    return model.eval(), tokenizer, config
