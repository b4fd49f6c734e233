"""Shared fixtures: a tiny random BERT for logic tests, paths to the real data and weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minbert.model.bert import BertConfig, BertModel
from minbert.model.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"

TINY_WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "good",
    "bad",
    "is",
    "was",
    "not",
    "great",
    "what",
    "how",
    "why",
    "##s",
    "##ing",
    "dog",
    "cat",
    ",",
    ".",
    "?",
    "!",
    "play",
    "run",
]


@pytest.fixture(scope="session")
def tiny_config() -> BertConfig:
    return BertConfig(
        vocab_size=len(TINY_WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )


@pytest.fixture
def tiny_model(tiny_config) -> BertModel:
    torch.manual_seed(0)
    return BertModel(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_vocab) -> Tokenizer:
    return Tokenizer(tiny_vocab)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ids-sst-dev.csv").is_file():
        pytest.fail(
            f"task data missing in {DATA_DIR}: run `make setup` (links ../shared/data/minbert)"
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def minilm():
    """The packaged pretrained MiniLM and its tokenizer (loaded once per session)."""
    from minbert.model.loading import load_pretrained

    return load_pretrained("minilm-l6")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from minbert.model.loading import resolve_model_dir

    return resolve_model_dir("minilm-l6")


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory, tiny_config, tiny_tokenizer) -> Path:
    """Root of the tiny run (``model/`` and ``data/``); configs come from tiny_run.run_config."""
    from tiny_run import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny"), tiny_config, tiny_tokenizer)


@pytest.fixture(scope="session")
def finished_tiny_run(tiny_setup, tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run written by ``minbert train`` (config, log, metrics,
    best/, last/, predictions, report). Tests copy it before changing anything in it."""
    from tiny_run import QUICK, run_config

    from minbert.cli import main

    root = tmp_path_factory.mktemp("finished")
    config = root / "config.toml"
    config.write_text(run_config(tiny_setup, *QUICK).to_toml())
    assert main(["train", "--config", str(config), "--out", str(root / "run")]) == 0
    return root / "run"
