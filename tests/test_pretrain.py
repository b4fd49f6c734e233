"""Pre-training (``minbert pretrain``: MLM and SimCSE) and both as auxiliary objectives, on the
tiny run: it trains and lowers its loss, resumes exactly, loads strictly into fine-tuning,
exports to ``BertForMaskedLM``, and refuses bad input by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_run import run_config, stop_after_step

from minbert.cli import main
from minbert.config import ConfigError
from minbert.data.io import DataError
from minbert.data.schedules import with_auxiliary
from minbert.model.loading import WeightsError, load_pretrained
from minbert.objectives.mlm import Masker, MLMConfig
from minbert.objectives.simcse import SimCSEConfig, simcse_loss, supervised_triples
from minbert.run.model_dir import load_model_dir
from minbert.train.trainer import Trainer, TrainingInterrupted

PRETRAIN = [
    "train.tasks=[]",
    "train.select_by=sts_zeroshot_spearman",
    "train.threads=1",
    "train.checkpoint_every=2",
    "pretrain.mlm.heldout=0.1",
]


def pretrain_config(root: Path, *overrides: str):
    return run_config(root, *PRETRAIN, *overrides)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_mlm_pretraining_lowers_its_own_loss(tiny_setup, tmp_path):
    config = pretrain_config(
        tiny_setup,
        "pretrain.mlm.weight=1",
        "train.epochs=4",
        "train.lr=2e-3",
        "train.warmup_ratio=0",
    )
    summary = Trainer(config, tmp_path / "run").run()
    records = _records(tmp_path / "run")
    losses = [r["train_loss"]["mlm"] for r in records]
    assert losses[-1] < losses[0] - 0.3, losses
    assert set(summary["dev"]) == {
        "mlm_accuracy",
        "mlm_perplexity",
        "sts_zeroshot_pearson",
        "sts_zeroshot_spearman",
    }
    # a random head over 17 tokens starts near log(17) nats
    assert math.log(17) - 1 < losses[0] < math.log(17) + 1.5
    assert records[0]["examples"]["mlm"] > 0 and not (tmp_path / "run" / "predictions").exists()


@pytest.mark.parametrize("mode", ["unsup", "sup"])
def test_a_stopped_pretraining_run_resumes_exactly(tiny_setup, tmp_path, mode):
    settings = [
        "pretrain.mlm.weight=1",
        "pretrain.simcse.weight=0.5",
        f"pretrain.simcse.mode={mode}",
        "pretrain.simcse.tasks=['quora','sts']",
        "pretrain.simcse.pooling=cls",  # its MLP is resumable state too
        "pretrain.simcse.positive_threshold=2.5",
        "pretrain.simcse.negative_threshold=2.0",
        "pretrain.head_warmup_steps=3",  # the warm-up ends after the stop
        "train.schedule=interleaved",
    ]
    config = pretrain_config(tiny_setup, *settings)
    whole = Trainer(config, tmp_path / "whole").run()
    stopped = Trainer(config, tmp_path / "resumed")
    stop_after_step(stopped, 2)
    with pytest.raises(TrainingInterrupted):
        stopped.run()
    resumed = Trainer(config, tmp_path / "resumed", resume=True).run()
    assert resumed["dev"] == whole["dev"]
    for name in ("best/model.safetensors", "last/state.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _records(tmp_path / "whole")[-1]["train_loss"].keys() == {"mlm", "simcse"}


def test_the_head_warm_up_leaves_the_encoder_alone(tiny_setup, tmp_path):
    config = pretrain_config(
        tiny_setup, "pretrain.mlm.weight=1", "pretrain.head_warmup_steps=1000", "train.epochs=1"
    )
    trainer = Trainer(config, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in trainer.model.objective_heads.state_dict().items()}
    trainer.run()
    after = trainer.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = trainer.model.objective_heads.state_dict()
    assert any(not torch.equal(head[k], moved[k]) for k in head)


def test_a_pretrained_run_is_a_model_name_loaded_strictly(tiny_setup, tmp_path):
    pre = tmp_path / "pre"
    Trainer(pretrain_config(tiny_setup, "pretrain.mlm.weight=1", "train.epochs=1"), pre).run()
    best = load_file(pre / "best" / "model.safetensors")
    encoder, tokenizer = load_pretrained(str(pre))
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, best[f"encoder.{key}"]), key
    assert tokenizer.vocab_file == pre / "best" / "vocab.txt"
    fine = Trainer(run_config(tiny_setup, f"model.name={pre}", "train.epochs=1"), tmp_path / "ft")
    start = fine.model.encoder.state_dict()
    assert all(torch.equal(start[k], best[f"encoder.{k}"]) for k in start)
    assert not fine.model.objective_heads  # fine-tuning brings no MLM head along


def test_a_run_without_a_trained_encoder_is_refused_by_name(tiny_setup, tmp_path):
    pre = tmp_path / "pre"
    config = pretrain_config(tiny_setup, "pretrain.mlm.weight=1", "train.epochs=1")
    stopped = Trainer(config, pre)
    stop_after_step(stopped, 1)
    with pytest.raises(TrainingInterrupted):
        stopped.run()
    with pytest.raises(WeightsError, match=r"pre: a minbert run without a trained encoder"):
        load_pretrained(str(pre))


def test_a_vocabulary_that_does_not_match_is_named(tiny_setup, tmp_path):
    pre = tmp_path / "pre"
    Trainer(pretrain_config(tiny_setup, "pretrain.mlm.weight=1", "train.epochs=1"), pre).run()
    vocab = pre / "best" / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra\n")
    with pytest.raises(Exception, match=r"vocab\.txt"):
        load_pretrained(str(pre))


def test_the_export_is_a_bert_for_masked_lm_with_the_same_logits(tiny_setup, tmp_path, capsys):
    pre = tmp_path / "pre"
    Trainer(pretrain_config(tiny_setup, "pretrain.mlm.weight=1", "train.epochs=1"), pre).run()
    assert main(["export", str(pre), str(tmp_path / "hf")]) == 0
    assert "BertForMaskedLM" in capsys.readouterr().out
    model, _, _ = load_model_dir(pre)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, 17, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    with torch.no_grad():
        ours = model.objective_heads["mlm"](model.encoder(ids, mask).last_hidden_state)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours[mask.bool()], theirs[mask.bool()], atol=1e-4)
    again, _ = load_pretrained(tmp_path / "hf")  # and back into minbert, strictly
    state = again.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.encoder.state_dict().items())


def test_mlm_and_simcse_join_their_share_of_the_task_steps(tiny_setup, tmp_path):
    config = run_config(
        tiny_setup,
        "train.threads=1",
        "train.epochs=1",
        "train.schedule=round_robin",
        "pretrain.mlm.weight=0.5",
        "pretrain.mlm.share=0.5",
        "pretrain.simcse.weight=0.2",
        "pretrain.simcse.share=0.25",
        "pretrain.simcse.tasks=['sst']",
    )
    trainer = Trainer(config, tmp_path / "run")
    steps = trainer.plans[0]
    assert sum("mlm" in s for s in steps) == len(steps) // 2
    assert sum("simcse" in s for s in steps) == len(steps) // 4
    assert all(len(set(s) & {"sst", "quora", "sts"}) == 1 for s in steps)
    summary = trainer.run()
    record = _records(tmp_path / "run")[0]
    assert record["examples"]["mlm"] == 8 * (len(steps) // 2)
    assert {"mlm", "simcse", "sst"} <= set(record["train_loss"])
    assert "mlm_accuracy" in summary["dev"] and "sts_zeroshot_pearson" not in summary["dev"]
    assert (tmp_path / "run" / "predictions" / "sst-test.csv").is_file()


def test_auxiliary_steps_are_spread_evenly():
    steps = [{"sst": 8}] * 8
    planned = with_auxiliary(steps, {"mlm": 0.25, "simcse": 1.0}, 8)
    assert [i for i, s in enumerate(planned) if "mlm" in s] == [3, 7]
    assert all(s["simcse"] == 8 and s["sst"] == 8 for s in planned)
    assert steps == [{"sst": 8}] * 8  # the plan given is not changed


def test_a_sentence_is_masked_the_same_in_any_batch_and_anew_each_pass(tiny_tokenizer):
    from minbert.data.batching import pad_sequences

    masker = Masker(tiny_tokenizer, MLMConfig(rate=0.5), seed=3)
    rows = [np.array([2, *range(5, 5 + n), 3]) for n in (6, 9, 4)]
    segment = pad_sequences(rows, [np.zeros_like(r) for r in rows])
    _, together = masker.mask(segment, np.array([10, 11, 12]), draw=1)
    alone_segment = pad_sequences(rows[1:2], [np.zeros_like(rows[1])])
    _, alone = masker.mask(alone_segment, np.array([11]), draw=1)
    assert torch.equal(together[1, : len(rows[1])], alone[0])
    _, next_pass = masker.mask(segment, np.array([10, 11, 12]), draw=2)
    assert not torch.equal(together, next_pass)
    ids = segment.input_ids
    special = (ids == 0) | (ids == 2) | (ids == 3)
    assert (together[special] == -100).all()


def test_hard_negatives_of_some_anchors_only_follow_the_formula():
    g = torch.Generator().manual_seed(5)
    a, p = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g)
    n = torch.randn(2, 3, generator=g, dtype=torch.float64)
    owners = torch.tensor([1, 3])
    got = simcse_loss(a, p.double(), 0.1, n, 0.5, negative_of=owners).item()
    cos = torch.nn.functional.cosine_similarity
    total = 0.0
    for i in range(4):
        logits = [cos(a[i], p[j].double(), dim=0) / 0.1 for j in range(4)]
        logits += [cos(a[i], n[k], dim=0) / 0.1 + (0.5 if owners[k] == i else 0) for k in range(2)]
        logits = torch.stack(logits)
        total += -(logits[i] - torch.logsumexp(logits, 0)).item()
    assert got == pytest.approx(total / 4, rel=1e-6)


def test_supervised_pairs_come_from_the_training_labels(tiny_setup):
    config = SimCSEConfig(
        weight=1, mode="sup", tasks=["quora", "sts"], positive_threshold=4, negative_threshold=1
    )
    triples = supervised_triples(config, tiny_setup / "data", seed=0)
    from minbert.data.io import read_task_file
    from minbert.data.tasks import TASKS

    quora = read_task_file(tiny_setup / "data" / "quora-train.csv", TASKS["quora"], "train")
    sts = read_task_file(tiny_setup / "data" / "sts-train.csv", TASKS["sts"], "train")
    expected = int((quora.labels == 1).sum() + (sts.labels >= 4).sum())
    assert len(triples) == expected
    negatives = {frozenset(t) for t, y in zip(quora.texts, quora.labels, strict=True) if y == 0}
    negatives |= {frozenset(t) for t, y in zip(sts.texts, sts.labels, strict=True) if y <= 1}
    for anchor, _, negative in triples:
        if negative is not None:
            assert frozenset((anchor, negative)) in negatives


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a good line\n\xff bad\n", r"text.txt:2: not UTF-8"),
        (b"", r"text.txt: the text file is empty"),
        (b"ok\n" + b"the " * 80 + b"\n", r"text.txt:2: 82 tokens, over the 40 of pretrain.mlm"),
    ],
)
def test_bad_text_files_are_named_and_nothing_is_written(tiny_setup, tmp_path, content, message):
    text = tmp_path / "text.txt"
    text.write_bytes(content)
    config = pretrain_config(
        tiny_setup,
        "pretrain.mlm.weight=1",
        f"pretrain.mlm.files=['{text}']",
        "pretrain.mlm.max_line_tokens=40",
        "pretrain.mlm.max_length=32",
    )
    with pytest.raises(DataError, match=message):
        Trainer(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.toml").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.mlm.tasks=['imdb']"], r"pretrain.mlm.tasks: unknown task 'imdb'"),
        (["pretrain.simcse.mode=sup", "pretrain.simcse.tasks=['sst']"], r"sup takes pairs"),
        (["pretrain.head_warmup_steps=5", "pretrain.mlm.weight=0"], r"head_warmup_steps"),
        (["train.select_by=overall_leaderboard"], r"train.select_by"),
        (["pretrain.mlm.weight=0", "pretrain.simcse.weight=0"], r"no pre-training objective"),
    ],
)
def test_bad_pretrain_settings_name_the_key(tiny_setup, overrides, message):
    with pytest.raises(ConfigError, match=message):
        pretrain_config(
            tiny_setup,
            "pretrain.simcse.weight=1",
            "pretrain.simcse.tasks=['sst']",
            "pretrain.mlm.weight=1",
            *overrides,
        )


def test_the_cli_keeps_pretraining_and_task_training_apart(tiny_setup, tmp_path, capsys):
    config = tmp_path / "pre.toml"
    config.write_text(pretrain_config(tiny_setup, "pretrain.mlm.weight=1").to_toml())
    out = tmp_path / "pre"
    assert main(["pretrain", "--config", str(config), "--out", str(out)]) == 0
    assert "mlm_accuracy" in capsys.readouterr().out
    # an earlier run is never written over
    assert main(["pretrain", "--config", str(config), "--out", str(out)]) == 2
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "t")]) == 2
    assert "minbert pretrain" in capsys.readouterr().err
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(run_config(tiny_setup).to_toml())
    assert main(["pretrain", "--config", str(tasks), "--out", str(tmp_path / "p2")]) == 2
    assert "trains no task" in capsys.readouterr().err
