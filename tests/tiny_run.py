"""A tiny run for trainer tests: a random 2-layer BERT exported as a pretrained directory,
and small random SST / Quora / STS files (train 40 rows, dev 12, test 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minbert.config import Config, load_config
from minbert.model.bert import BertConfig, BertModel
from minbert.model.loading import export_pretrained
from minbert.model.tokenizer import Tokenizer

# Settings of a quick 2-epoch tiny run, with checkpoints inside each epoch.
QUICK = ("train.epochs=2", "train.checkpoint_every=2", "train.threads=1")
WORDS = ["the", "a", "movie", "film", "good", "bad", "is", "was", "not", "great", "dog", "cat"]


def _sentence(rng):
    return " ".join(rng.choice(WORDS, size=rng.integers(2, 7)))


def make_tiny_run(root: Path, tiny_config: BertConfig, tiny_tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    export_pretrained(BertModel(tiny_config), tiny_tokenizer, root / "model")
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    sizes = {"train": 40, "dev": 12, "test": 6}
    for split, n in sizes.items():
        labelled = split != "test"
        sst = ["\tid\tsentence" + ("\tsentiment" if labelled else "")]
        quora = ["\tid\tsentence1\tsentence2" + ("\tis_duplicate" if labelled else "")]
        sts = ["\tid\tsentence1\tsentence2" + ("\tsimilarity" if labelled else "")]
        for i in range(n):
            sst.append(
                f"{i}\ts{split}{i}\t {_sentence(rng)}"
                + (f"\t{rng.integers(5)}" if labelled else "")
            )
            quora.append(
                f"{i}\tq{split}{i}\t{_sentence(rng)}\t{_sentence(rng)}"
                + (f"\t{float(rng.integers(2))}" if labelled else "")
            )
            sts.append(
                f"{i}\tt{split}{i}\t{_sentence(rng)}\t{_sentence(rng)}"
                + (f"\t{rng.uniform(0, 5):.1f}" if labelled else "")
            )
        suffix = "test-student" if split == "test" else split
        (data / f"ids-sst-{suffix}.csv").write_text("\n".join(sst) + "\n")
        (data / f"quora-{suffix}.csv").write_text("\n".join(quora) + "\n")
        (data / f"sts-{suffix}.csv").write_text("\n".join(sts) + "\n")
    return root


def tiny_overrides(root: Path) -> list[str]:
    """The tiny run's settings as ``--set`` overrides: three tasks, 2 epochs of batch 8, fp32."""
    return [
        f"model.name={root / 'model'}",
        f"data.dir={root / 'data'}",
        "data.max_length=32",
        "train.tasks=['sst','quora','sts']",
        "train.batch_size=8",
        "train.progress=false",
        "train.precision=fp32",
        "train.epochs=2",
        "train.compile_optimizer=false",  # tests/test_optim.py covers the compiled update
        "heads.sts.encoding=bi",
        "heads.sts.kind=cosine",
        "heads.sts.pooling=mean",
    ]


def run_config(root: Path, *overrides: str) -> Config:
    """The tiny run's config (``tiny_overrides``), ``overrides`` on top."""
    return load_config(None, [*tiny_overrides(root), *overrides])


def stop_after_step(trainer, step: int) -> None:
    """Make ``trainer`` receive SIGTERM after optimiser step ``step``, as a signal would: the
    step finishes, a checkpoint is written, the run raises ``TrainingInterrupted``."""
    import signal

    original = trainer.train_step

    def stopping(plan):
        result = original(plan)
        if trainer.state.step == step:
            trainer.signals.received = signal.SIGTERM
        return result

    trainer.train_step = stopping


def stop_after_step_then_resume(config: Config, out: Path, step: int) -> dict:
    """Train ``config`` into ``out``, stopped after ``step`` (``stop_after_step``), then
    resume it to the end; the resumed run's summary."""
    import pytest

    from minbert.train.session import TrainingInterrupted
    from minbert.train.trainer import Trainer

    stopped = Trainer(config, out)
    stop_after_step(stopped, step)
    with pytest.raises(TrainingInterrupted):
        stopped.run()
    return Trainer(config, out, resume=True).run()
