"""Augmentation (data/augment.py): the EDA operations' rates, text-awareness and WordNet use,
determinism, pair symmetry, the augmented stream, resume, `minbert augment` and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minbert.cli import main
from minbert.config import ConfigError, load_config
from minbert.data.augment import (
    PTB_TOKENS,
    STOP_WORDS,
    AugmentConfig,
    AugmentedStream,
    Augmenter,
    AugmentError,
    WordNet,
    join_words,
    load_wordnet,
    random_deletion,
    random_insertion,
    random_swap,
    split_words,
    synonym_replacement,
)
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
WORDNET_DIR = ROOT / "nltk_data"  # make setup links ../shared/data/nltk_data here
SST_TRAIN = ROOT / "data" / "ids-sst-train.csv"


@pytest.fixture(scope="module")
def wordnet() -> WordNet:
    return load_wordnet(WORDNET_DIR)


@pytest.fixture(scope="module")
def sst_sentences() -> list[str]:
    data = read_task_file(SST_TRAIN, TASKS["sst"], "train", limit=1500)
    return [t[0] for t in data.texts]


def fake_synonyms(word: str) -> tuple[str, ...]:
    """Every word has the one synonym ``zz<word>``: rates can be counted exactly."""
    return (f"zz{word.lower()}",)


def distinct_words(count: int, rng) -> list[str]:
    """``count`` distinct non-stop words of letters."""
    letters = np.array(list("bcdfghjklmnpqrstvwxz"))
    words = {"".join(rng.choice(letters, 6)) for _ in range(count * 2)}
    return sorted(words)[:count]


# -- the operations' rates on a large sample --------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.13])
def test_each_operation_changes_its_share_of_the_words(rate):
    rng = np.random.default_rng(0)
    sentences = [distinct_words(40, rng) for _ in range(1500)]
    replaced, inserted, moved, deleted = [], [], [], []
    for words in sentences:
        text = " ".join(words)
        out = synonym_replacement(split_words(text), rate, rng, fake_synonyms)
        replaced.append(sum(t.core.startswith("zz") for t in out) / 40)
        out = random_insertion(split_words(text), rate, rng, fake_synonyms)
        inserted.append((len(out) - 40) / 40)
        out = random_swap(split_words(text), rate, rng, fake_synonyms)
        moved.append(sum(a != t.core for a, t in zip(words, out, strict=True)) / 40)
        out = random_deletion(split_words(text), rate, rng, fake_synonyms)
        deleted.append((40 - len(out)) / 40)
    # n = rate * 40 rounded at random: its mean is exactly rate * 40
    assert np.mean(replaced) == pytest.approx(rate, abs=0.003)
    assert np.mean(inserted) == pytest.approx(rate, abs=0.003)
    assert np.mean(deleted) == pytest.approx(rate, abs=0.005)
    # each swap moves two words (a later swap can move a word back: a little less)
    assert 1.7 * rate <= np.mean(moved) <= 2 * rate + 0.003


def test_deletion_keeps_a_word_and_every_operation_leaves_an_empty_sentence_alone():
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert len(random_deletion(split_words("good film"), 1.0, rng, fake_synonyms)) == 1
    for op in (synonym_replacement, random_insertion, random_swap, random_deletion):
        assert join_words(op(split_words(", -LRB- 42 -RRB- ."), 0.5, rng, fake_synonyms)) == (
            ", -LRB- 42 -RRB- ."
        )


# -- text-aware ---------------------------------------------------------------------------------


def test_ptb_tokens_punctuation_and_numbers_are_never_changed_moved_or_removed(sst_sentences):
    rng = np.random.default_rng(2)
    ops = (synonym_replacement, random_insertion, random_swap, random_deletion)
    checked = Counter()
    for text in sst_sentences[:600]:
        fixed = [t.text for t in split_words(text) if not t.word]
        for op in ops:
            out = op(split_words(text), 0.3, rng, fake_synonyms)
            after = [t.text for t in out if not t.word]
            if op is random_deletion:  # a deleted "Mr." leaves its "." among them
                rest = iter(after)
                assert all(t in rest for t in fixed), (op.__name__, text)  # in order
            else:
                assert after == fixed, (op.__name__, text)
            checked.update(t for t in fixed if t in PTB_TOKENS)
    assert checked["n't"] and checked["-LRB-"] and checked["'s"] and checked["``"]


def test_words_are_found_inside_attached_punctuation_and_keep_it():
    tokens = split_words('How do I "cook" rice? -LRB- ca n\'t say -RRB-')
    assert [(t.prefix, t.core, t.suffix, t.word) for t in tokens] == [
        ("", "How", "", True),
        ("", "do", "", True),
        ("", "I", "", True),
        ('"', "cook", '"', True),
        ("", "rice", "?", True),
        ("", "-LRB-", "", False),
        ("", "ca", "", False),  # the word before n't is part of it
        ("", "n't", "", False),
        ("", "say", "", True),
        ("", "-RRB-", "", False),
    ]
    rng = np.random.default_rng(0)
    out = join_words(synonym_replacement(tokens, 1.0, rng, fake_synonyms))
    assert out == 'How do I "zzcook" zzrice? -LRB- ca n\'t zzsay -RRB-'  # stop words stay


def test_synonyms_replace_only_words_wordnet_knows_and_keep_their_case(wordnet, sst_sentences):
    rng = np.random.default_rng(3)
    changed = 0
    for text in sst_sentences[:400]:
        before = split_words(text)
        after = synonym_replacement(split_words(text), 0.2, rng, wordnet.synonyms)
        assert len(after) == len(before)  # replacement never adds or removes a token
        for old, new in zip(before, after, strict=True):
            if old.core == new.core:
                continue
            changed += 1
            assert old.word and old.core.lower() not in STOP_WORDS
            known = [s.lower() for s in wordnet.synonyms(old.core)]
            assert new.core.lower() in known, (old.core, new.core)
            if old.core[0].isupper():  # a lower-case word takes WordNet's case ("Dickens")
                assert new.core[0].isupper()
            assert (new.prefix, new.suffix) == (old.prefix, old.suffix)
    assert changed > 300


def test_unknown_words_are_left_as_they_are(wordnet):
    rng = np.random.default_rng(0)
    text = "Zxqv Blorptastic qwertyuiop"  # no WordNet entry, not stop words
    for _ in range(20):
        assert (
            join_words(synonym_replacement(split_words(text), 1.0, rng, wordnet.synonyms)) == text
        )
        assert join_words(random_insertion(split_words(text), 1.0, rng, wordnet.synonyms)) == text


# -- determinism and labels -------------------------------------------------------------------


def test_a_copy_depends_on_seed_epoch_row_and_copy_only():
    config = AugmentConfig(swap=0.3, delete=0.2)
    augmenter = Augmenter(TASKS["sst"], config)
    texts = ("the quick brown fox jumps over the lazy dog today",)
    first = augmenter.copy(texts, 7, 1, 5, 1)
    assert augmenter.copy(texts, 7, 1, 5, 1) == first  # same inputs, same copy
    others = {augmenter.copy(texts, *key) for key in [(8, 1, 5, 1), (7, 2, 5, 1), (7, 1, 6, 1)]}
    others.add(augmenter.copy(texts, 7, 1, 5, 2))
    assert len(others | {first}) == 5  # each key its own copy


def test_pair_swap_keeps_the_label_and_is_refused_where_it_could_change_it(tiny_setup):
    augmenter = Augmenter(TASKS["sts"], AugmentConfig(pair_swap=1.0))
    assert augmenter.copy(("a dog runs", "a cat sits"), 0, 1, 0, 1) == ("a cat sits", "a dog runs")
    for task in ("sst", "cfimdb"):
        with pytest.raises(
            ConfigError, match=f"augment.{task}.pair_swap: {task} is not a symmetric"
        ):
            load_config(None, [f"augment.{task}.pair_swap=0.5"])
    with pytest.raises(ConfigError, match="augment.sst.copies: no operation is switched on"):
        load_config(None, ["augment.sst.copies=3"])
    with pytest.raises(ConfigError, match="unknown key 'augment.sst.synonyms'"):
        load_config(None, ["augment.sst.synonyms=0.1"])


def _trainer(tiny_setup, out: Path, *settings: str) -> Trainer:
    """A trainer built (every input read, the folder claimed), not run."""
    from tiny_run import run_config

    trainer = Trainer(run_config(tiny_setup, *settings), out)
    trainer._unlock()
    return trainer


def test_an_augmented_stream_has_fresh_copies_every_epoch_and_the_originals_labels(
    tiny_setup, tmp_path
):
    settings = ["train.tasks=['sts']", "augment.sts.copies=2", "augment.sts.swap=0.5"]
    stream = _trainer(tiny_setup, tmp_path, *settings, "augment.sts.pair_swap=0.5").streams["sts"]
    assert isinstance(stream, AugmentedStream)
    n = len(stream.data)
    assert len(stream) == 3 * n
    epoch1 = [stream.copy_texts(r, 1, epoch=1) for r in range(n)]
    epoch2 = [stream.copy_texts(r, 1, epoch=2) for r in range(n)]
    assert epoch1 != epoch2
    rows = stream.take_rows(3 * n)  # one whole pass
    assert sorted(rows.tolist()) == list(range(3 * n))
    assert stream.augmented_seen == 2 * n
    batch = stream.batch(rows)
    assert torch.equal(batch.labels, torch.from_numpy(stream.data.labels[rows % n]))
    # an augmented row is tokenised as the originals are: both sentences, bi-encoded here
    assert len(batch.segments) == 2
    copy_row = int(np.flatnonzero(rows >= n)[0])
    a, b = stream.copy_texts(rows[copy_row] % n, rows[copy_row] // n)
    ids = stream.tokenizer.encode(a, max_length=32).input_ids
    assert batch.segments[0].input_ids[copy_row, : len(ids)].tolist() == ids


# -- training ------------------------------------------------------------------------------------


def test_resume_with_augmentation_on_is_exact(tiny_setup, tmp_path):
    from tiny_run import QUICK, run_config, stop_after_step_then_resume

    settings = [
        *QUICK,
        f"data.wordnet_dir={WORDNET_DIR}",
        "augment.sst.synonym=0.2",
        "augment.sst.delete=0.1",
        "augment.quora.insert=0.2",
        "augment.quora.pair_swap=0.5",
        "augment.sts.swap=0.2",
        "augment.sts.copies=2",
        "train.checkpoint_every=1",
    ]
    config = run_config(tiny_setup, *settings)
    whole = Trainer(config, tmp_path / "whole").run()
    resumed = stop_after_step_then_resume(config, tmp_path / "resumed", 5)
    assert resumed["dev"] == whole["dev"]
    a = load_file(tmp_path / "whole" / "best" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    seen = records[-1]["augmented_rows"]
    assert seen == {"sst": 80, "quora": 80, "sts": 160}  # 40 rows: copies x 40 a pass, 2 passes
    info = json.loads((tmp_path / "resumed" / "augment.json").read_text())
    assert info == json.loads((tmp_path / "whole" / "augment.json").read_text())
    assert len(info["sst"]["examples"]) == 10
    summary = (tmp_path / "resumed" / "report" / "summary.md").read_text()
    assert "## Augmentation" in summary and "80 augmented rows seen" in summary


def test_an_epoch_of_an_augmented_task_is_its_rows_and_copies(tiny_setup, tmp_path):
    plain = _trainer(tiny_setup, tmp_path / "plain", "train.tasks=['sst']")
    settings = ["train.tasks=['sst']", "augment.sst.swap=0.1", "augment.sst.copies=3"]
    augmented = _trainer(tiny_setup, tmp_path / "augmented", *settings)
    assert augmented.total_steps == 4 * plain.total_steps


def test_train_fraction_draws_the_same_rows_for_the_same_seed(tiny_setup):
    from tiny_run import run_config

    from minbert.data.splits import load_training_data
    from minbert.model.tokenizer import Tokenizer

    tokenizer = Tokenizer(tiny_setup / "model" / "vocab.txt")
    config = run_config(tiny_setup, "data.train_fraction=0.25")
    first, _ = load_training_data(config, tokenizer)
    again, _ = load_training_data(config, tokenizer)
    other, _ = load_training_data(
        run_config(tiny_setup, "data.train_fraction=0.25", "train.seed=5"), tokenizer
    )
    assert len(first["sst"]) == 10
    assert first["sst"].ids == again["sst"].ids != other["sst"].ids
    with pytest.raises(ConfigError, match="data.train_fraction: must be more than 0"):
        run_config(tiny_setup, "data.train_fraction=0")


# -- bad input and the CLI --------------------------------------------------------------------


def test_missing_wordnet_says_where_to_put_it(tmp_path):
    with pytest.raises(AugmentError, match="no WordNet there .*`make setup` links ./nltk_data"):
        WordNet(tmp_path)


def test_a_run_asking_for_synonyms_without_wordnet_fails_before_writing(
    tiny_setup, tmp_path, capsys
):
    from tiny_run import run_config

    config = run_config(
        tiny_setup, "augment.sst.synonym=0.1", f"data.wordnet_dir={tmp_path / 'none'}"
    )
    with pytest.raises(AugmentError, match="data.wordnet_dir"):
        Trainer(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.toml").exists()


def test_the_augment_command_writes_rows_then_copies_and_never_overwrites(
    tiny_setup, tmp_path, capsys
):
    source = tiny_setup / "data" / "quora-train.csv"
    out = tmp_path / "aug.tsv"
    args = ["augment", str(source), "--task", "quora", "--out", str(out)]
    sets = ["--set", f"data.wordnet_dir={WORDNET_DIR}", "--set", "augment.quora.synonym=0.3"]
    assert main([*args, *sets, "--set", "augment.quora.copies=2"]) == 0
    data = read_task_file(source, TASKS["quora"], "train")
    written = read_task_file(out, TASKS["quora"], "train")
    assert written.ids[:40] == data.ids and written.texts[:40] == data.texts
    assert written.ids[40:80] == [f"{i}-aug1" for i in data.ids]
    assert written.ids[80:] == [f"{i}-aug2" for i in data.ids]
    assert np.array_equal(written.labels, np.tile(data.labels, 3))  # labels never change
    assert written.texts[40:] != data.texts * 2
    before = out.read_bytes()
    assert main([*args, *sets]) == 2
    assert "exists; give another --out, or --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["augment", str(source), "--task", "quora", "--out", str(tmp_path / "x.tsv")]) == 2
    assert "augment.quora: no operation is switched on" in capsys.readouterr().err
