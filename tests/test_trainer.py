"""The training loop on a tiny random model and tiny data files (seconds, no real weights)."""

import json

import numpy as np
import pytest

from minbert.config import load_config
from minbert.model.loading import export_pretrained
from minbert.train import strategies
from minbert.train.trainer import Trainer

WORDS = ["the", "a", "movie", "film", "good", "bad", "is", "was", "not", "great", "dog", "cat"]


def _sentence(rng):
    return " ".join(rng.choice(WORDS, size=rng.integers(2, 7)))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_config, tiny_tokenizer):
    import torch

    from minbert.model.bert import BertModel

    root = tmp_path_factory.mktemp("tiny")
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


def _config(root, *overrides):
    return load_config(
        None,
        [
            f"model.name={root / 'model'}",
            f"data.dir={root / 'data'}",
            "data.max_length=32",
            "train.tasks=['sst','quora','sts']",
            "train.batch_size=8",
            "train.progress=false",
            "train.precision=fp32",
            "train.epochs=2",
            "heads.sts.encoding=bi",
            "heads.sts.kind=cosine",
            "heads.sts.pooling=mean",
            *overrides,
        ],
    )


class Recording(strategies.SumStrategy):
    calls: list[list[str]] = []

    def backward(self, losses, shared_params):
        Recording.calls.append(sorted(losses))
        assert all(loss.ndim == 0 for loss in losses.values())
        assert shared_params and all(p.requires_grad for p in shared_params)
        return super().backward(losses, shared_params)


def test_interleaved_step_passes_one_loss_per_task(tiny_setup, tmp_path, monkeypatch):
    Recording.calls = []
    monkeypatch.setattr("minbert.train.trainer.build_strategy", lambda *a, **k: Recording())
    config = _config(
        tiny_setup, "train.schedule=interleaved", "train.sampling=equal", "train.steps_per_epoch=3"
    )
    Trainer(config, tmp_path / "run").run()
    assert Recording.calls == [["quora", "sst", "sts"]] * 6


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("sequential", {"sst": 40, "quora": 40, "sts": 40}),
        ("round_robin", {"sst": 40, "quora": 40, "sts": 40}),  # 15 steps of 8, 5 per task
        ("interleaved", {"sst": 40, "quora": 40, "sts": 40}),  # 5 steps of 8 + 8 + 8
    ],
)
def test_examples_seen_per_epoch_are_logged(tiny_setup, tmp_path, schedule, expected):
    config = _config(tiny_setup, f"train.schedule={schedule}", "train.sampling=equal")
    summary = Trainer(config, tmp_path / "run").run()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == 2
    assert records[0]["examples"] == records[0]["planned_examples"] == expected
    assert {
        "sst_accuracy",
        "quora_accuracy",
        "sts_pearson",
        "overall_mean",
        "overall_leaderboard",
    } <= set(summary["dev"])


def test_frozen_mode_only_trains_heads(tiny_setup, tmp_path):
    config = _config(tiny_setup, "model.mode=frozen", "train.tasks=['sst']", "train.epochs=1")
    trainer = Trainer(config, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    head_before = trainer.model.heads["sst"].classifier[-1].weight.clone()
    trainer.run()
    for k, v in trainer.model.encoder.state_dict().items():
        assert (v == before[k]).all(), k
    assert not (trainer.model.heads["sst"].classifier[-1].weight == head_before).all()


def test_max_steps_and_predictions(tiny_setup, tmp_path):
    config = _config(tiny_setup, "train.max_steps=3", "train.schedule=interleaved")
    Trainer(config, tmp_path / "run").run()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["step"] == 3
    for task in ("sst", "quora", "sts"):
        for split, n in (("dev", 12), ("test", 6)):
            lines = (
                (tmp_path / "run" / "predictions" / f"{task}-{split}.csv").read_text().splitlines()
            )
            assert lines[0] == "id,prediction" and len(lines) == n + 1
    sts = [
        float(line.split(",")[1])
        for line in (tmp_path / "run" / "predictions" / "sts-dev.csv").read_text().splitlines()[1:]
    ]
    assert all(0.0 <= s <= 5.0 for s in sts)


def test_same_seed_same_result(tiny_setup, tmp_path):
    config = _config(tiny_setup, "train.max_steps=4", "train.schedule=round_robin")
    a = Trainer(config, tmp_path / "a").run()["dev"]
    b = Trainer(config, tmp_path / "b").run()["dev"]
    assert a == b
