"""Saving and loading a trained model directory (``RUN/best/``), written atomically.

A model directory holds everything needed to rebuild the model without the pretrained
package: ``model.safetensors`` (encoder + heads), ``config.toml`` (the run's resolved
config), ``encoder.json`` (the BERT architecture), ``vocab.txt`` and ``meta.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from minbert.config import Config, load_config
from minbert.model.bert import BertConfig, BertModel
from minbert.model.multitask import MultiTaskModel
from minbert.model.tokenizer import Tokenizer
from minbert.run.atomic import recover, swap_in
from minbert.run.layout import RunDir
from minbert.run.manifest import CheckpointError, read_checked, read_json, verify, write_manifest


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
    save_file(state, tmp / "model.safetensors")
    (tmp / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    (tmp / "encoder.json").write_text(json.dumps(model.encoder.config.to_hf_dict(), indent=2))
    shutil.copyfile(tokenizer.vocab_file, tmp / "vocab.txt")
    (tmp / "meta.json").write_text(
        json.dumps({**meta, "lowercase": tokenizer.lowercase, "tasks": model.tasks}, indent=2)
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
    meta = read_checked(model_dir / "meta.json", read_json, advice)
    encoder_config = read_checked(model_dir / "encoder.json", BertConfig.from_json, advice)
    encoder = BertModel(encoder_config, attention=config.model.attention)
    model = MultiTaskModel(encoder, config.head_specs(meta["tasks"]))
    weights = model_dir / "model.safetensors"
    try:
        model.load_state_dict(read_checked(weights, load_file, advice), strict=True)
    except RuntimeError as exc:  # names or shapes that disagree with config.toml/encoder.json
        raise CheckpointError(f"{weights} does not fit its config files: {exc}. {advice}") from None
    tokenizer = Tokenizer(
        model_dir / "vocab.txt", meta.get("lowercase", True), ptb_text=config.data.ptb_text
    )
    return model.eval(), tokenizer, config
