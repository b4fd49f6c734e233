"""Saving and loading a trained model directory (``RUN/best/``), written atomically.

A model directory holds everything needed to rebuild the model without the pretrained
package: ``model.safetensors`` (encoder + heads), ``config.toml`` (the run's resolved
config), ``encoder.json`` (the BERT architecture), ``vocab.txt`` and ``meta.json``.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from minbert.config import Config, load_config
from minbert.model.bert import BertModel
from minbert.model.loading import (
    check_state,
    check_vocab,
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
    encoder = BertModel(encoder_config, attention=config.model.attention)
    extra = objective_heads(config, encoder) if meta.get("objective_heads") else {}
    model = MultiTaskModel(encoder, config.head_specs(meta["tasks"]), extra)
    weights = model_dir / "model.safetensors"
    state = read_checked(weights, read_safetensors, advice)
    # every way the folder can disagree with itself, named (names, shapes, vocabulary)
    check_state(state, model.state_dict(), str(weights), f"the model of {encoder_json}")
    check_vocab(model_dir / "vocab.txt", encoder_config, encoder_json, weights)
    model.load_state_dict(state, strict=True)
    tokenizer = Tokenizer(
        model_dir / "vocab.txt", meta.get("lowercase", True), ptb_text=config.data.ptb_text
    )
    return model.eval(), tokenizer, config
