"""Data augmentation: the four EDA operations (Wei & Zou 2019) with WordNet synonyms, and pair
symmetry for symmetric pair tasks; configured per task in ``[augment.<task>]``, off by default.

An augmented copy of a sentence is made by one of the switched-on operations, drawn at random:
- synonym replacement: n of the sentence's words (never stop words) replaced by a WordNet
  synonym of each;
- random insertion: n times, a synonym of a random word inserted at a random place;
- random swap: n times, two random words swapped;
- random deletion: each word deleted with probability p (at least one word stays).
n is the operation's rate times the sentence's word count, rounded up or down at random so
that its expected value is exactly that (at least 1, as EDA has it). Pair symmetry swaps an
augmented copy's two sentences (Quora, STS: same label either way).

The operations act on words only: whitespace tokens whose letters form a word
(``cook?`` is the word ``cook`` with ``?`` attached, which stays). Penn Treebank tokens
(``-LRB-``, ``n't``, ``'s``, ``` `` ```), punctuation, numbers and the word before ``n't``
(``ca``, ``wo``) are never changed, moved or removed; a replacement keeps the word's case
(``Film`` -> ``Movie``). Part of speech is not used: no tagger is available offline, so a
synonym comes from any of the word's senses, as in EDA's own code.

Every copy is a function of (seed, task, epoch, row, copy): runs are reproducible, resume
exactly, and see fresh copies every epoch.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from minbert.data.batching import Batch, EncodedTask, TaskStream, encode_texts, pad_sequences
from minbert.data.tasks import TASKS, TaskSpec
from minbert.errors import UserError
from minbert.settings import ConfigError, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    """How one task's training rows are augmented: ``[augment.<task>]``."""

    copies: int = setting(
        1,
        "augmented copies of each training row per epoch, drawn afresh every epoch (EDA's "
        "n_aug): an epoch has (1 + copies) times the rows",
        min=1,
        max=64,
    )
    synonym: float = setting(
        0.0,
        "synonym replacement: this share of a sentence's words replaced by a WordNet synonym "
        "(EDA's alpha_sr; 0: off)",
        min=0.0,
        max=1.0,
    )
    insert: float = setting(
        0.0,
        "random insertion: synonyms of the sentence's words inserted at random places, this "
        "share of its word count (alpha_ri; 0: off)",
        min=0.0,
        max=1.0,
    )
    swap: float = setting(
        0.0,
        "random swap: two words swapped, this share of the word count times (alpha_rs; 0: off)",
        min=0.0,
        max=1.0,
    )
    delete: float = setting(
        0.0,
        "random deletion: each word deleted with this probability (p_rd; 0: off)",
        min=0.0,
        max=1.0,
    )
    pair_swap: float = setting(
        0.0,
        "symmetric pair tasks (quora, sts): the probability that an augmented copy has its "
        "two sentences swapped (1 with no other operation: every row also seen swapped)",
        min=0.0,
        max=1.0,
    )

    @property
    def operations(self) -> list[str]:
        """The switched-on text operations, in a fixed order."""
        return [name for name in OPERATIONS if getattr(self, name) > 0]

    @property
    def enabled(self) -> bool:
        return bool(self.operations) or self.pair_swap > 0

    @property
    def needs_wordnet(self) -> bool:
        return self.synonym > 0 or self.insert > 0

    def check(self, spec: TaskSpec) -> None:
        if self.pair_swap and not spec.symmetric:
            raise ConfigError(
                f"augment.{spec.name}.pair_swap: {spec.name} is not a symmetric pair task "
                "(swapping its sentences could change the label); pair symmetry applies to "
                "quora and sts"
            )
        if self.copies != 1 and not self.enabled:
            raise ConfigError(
                f"augment.{spec.name}.copies: no operation is switched on; set a rate "
                f"({', '.join(OPERATIONS)} or pair_swap)"
            )

    def summary(self) -> str:
        """``copies=2 synonym=0.1 ...``: the settings that differ from off."""
        parts = [f"copies={self.copies}"]
        parts += [
            f"{f.name}={getattr(self, f.name)}" for f in fields(self)[1:] if getattr(self, f.name)
        ]
        return " ".join(parts)


class AugmentError(UserError, ValueError):
    """Augmentation that cannot run as configured (e.g. no WordNet where it was asked for)."""


# -- words ---------------------------------------------------------------------------------------

# NLTK's English stop words (the list EDA uses), which synonym replacement never touches.
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will
    just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma
    mightn mustn needn shan shouldn wasn weren won wouldn""".split()  # noqa: SIM905 (readable)
)
# Penn Treebank tokens, as SST and CFIMDB are written: never changed, moved or removed.
PTB_TOKENS = frozenset(
    "-LRB- -RRB- -LSB- -RSB- -LCB- -RCB- `` '' ` ' n't 's 're 've 'll 'd 'm".split()  # noqa: SIM905
)
_WORD = re.compile(r"([^\w]*)([A-Za-z]+(?:[-'][A-Za-z]+)*)([^\w]*)")


@dataclass
class Token:
    """One whitespace token: ``core`` is the word (or the whole token when it is not one),
    ``prefix``/``suffix`` the punctuation attached to it."""

    core: str
    word: bool  # an operation may change, move or remove the core
    prefix: str = ""
    suffix: str = ""

    @property
    def text(self) -> str:
        return self.prefix + self.core + self.suffix


def split_words(text: str) -> list[Token]:
    tokens = []
    for raw in text.split():
        match = None if raw in PTB_TOKENS else _WORD.fullmatch(raw)
        if match is None:
            tokens.append(Token(raw, False))
        else:
            tokens.append(Token(match[2], True, match[1], match[3]))
    for before, after in zip(tokens, tokens[1:], strict=False):
        if after.core.lower() == "n't":  # ca n't, wo n't: "ca" is not the word "ca"
            before.word = False
    return tokens


def join_words(tokens: list[Token]) -> str:
    return " ".join(t.text for t in tokens if t.text)


def match_case(word: str, like: str) -> str:
    """``word`` in the case of ``like``: UPPER, Title or as WordNet writes it."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# -- WordNet -------------------------------------------------------------------------------------


class WordNet:
    """Synonyms from WordNet 3.0 read with NLTK from a local folder: an NLTK data folder
    (holding ``corpora/wordnet``) or the ``wordnet`` folder itself."""

    def __init__(self, folder: str | Path):
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        root = Path(folder).expanduser().resolve()
        corpus = root / "corpora" / "wordnet"
        if not (corpus / "index.noun").is_file() and (root / "index.noun").is_file():
            corpus, root = root, root.parent.parent
        if not (corpus / "index.noun").is_file():
            raise AugmentError(
                f"data.wordnet_dir = {str(folder)!r}: no WordNet there (looked for "
                f"{corpus / 'index.noun'}). `make setup` links ./nltk_data to "
                "../shared/data/nltk_data; or point data.wordnet_dir at an NLTK data folder "
                "holding corpora/wordnet (nltk.download('wordnet') writes one)"
            )
        if str(root) not in nltk.data.path:  # NLTK reads only from its data path
            nltk.data.path.insert(0, str(root))
        self.folder = corpus
        with warnings.catch_warnings():  # "multilingual functions are not available": unused
            warnings.simplefilter("ignore", UserWarning)
            self.reader = WordNetCorpusReader(str(corpus), None)
        self._cache: dict[str, tuple[str, ...]] = {}

    def synonyms(self, word: str) -> tuple[str, ...]:
        """The other lemma names of every sense of ``word`` (lower case), in WordNet's order,
        multi-word ones with spaces; empty when WordNet does not know the word."""
        word = word.lower()
        if word not in self._cache:
            names: dict[str, None] = {}
            for synset in self.reader.synsets(word):
                for lemma in synset.lemma_names():
                    name = lemma.replace("_", " ")
                    if name.lower() != word and re.fullmatch(r"[A-Za-z][A-Za-z' -]*", name):
                        names[name] = None
            self._cache[word] = tuple(names)
        return self._cache[word]


_WORDNETS: dict[Path, WordNet] = {}


def load_wordnet(folder: str | Path) -> WordNet:
    """One ``WordNet`` per folder and process (reading it takes seconds)."""
    key = Path(folder).expanduser().resolve()
    if key not in _WORDNETS:
        log.info("reading WordNet from %s", folder)
        _WORDNETS[key] = WordNet(folder)
    return _WORDNETS[key]


# -- the operations ------------------------------------------------------------------------------

Synonyms = Callable[[str], tuple[str, ...]]


def change_count(rate: float, words: int, rng: np.random.Generator) -> int:
    """rate * words, rounded at random to an integer with that expected value; at least 1."""
    exact = rate * words
    return max(1, math.floor(exact + rng.random()))


def _replaceable(tokens: list[Token], synonyms: Synonyms) -> list[int]:
    return [
        i
        for i, t in enumerate(tokens)
        if t.word and t.core.lower() not in STOP_WORDS and synonyms(t.core)
    ]


def synonym_replacement(tokens, rate, rng, synonyms: Synonyms) -> list[Token]:
    words = sum(t.word for t in tokens)
    candidates = _replaceable(tokens, synonyms)
    if not words or not candidates:
        return tokens
    count = min(change_count(rate, words, rng), len(candidates))
    for i in rng.choice(candidates, count, replace=False):
        old = tokens[i]
        choices = synonyms(old.core)
        new = choices[rng.integers(len(choices))]
        tokens[i] = Token(match_case(new, old.core), True, old.prefix, old.suffix)
    return tokens


def random_insertion(tokens, rate, rng, synonyms: Synonyms) -> list[Token]:
    words = sum(t.word for t in tokens)
    candidates = _replaceable(tokens, synonyms)
    if not words or not candidates:
        return tokens
    for _ in range(change_count(rate, words, rng)):
        source = tokens[candidates[rng.integers(len(candidates))]]
        choices = synonyms(source.core)
        new = Token(choices[rng.integers(len(choices))], True)
        at = int(rng.integers(len(tokens) + 1))
        tokens.insert(at, new)
        candidates = [c + (c >= at) for c in candidates]
    return tokens


def random_swap(tokens, rate, rng, synonyms: Synonyms) -> list[Token]:
    places = [i for i, t in enumerate(tokens) if t.word]
    if len(places) < 2:
        return tokens
    for _ in range(change_count(rate, len(places), rng)):
        a, b = rng.choice(places, 2, replace=False)
        tokens[a].core, tokens[b].core = tokens[b].core, tokens[a].core
    return tokens


def random_deletion(tokens, rate, rng, synonyms: Synonyms) -> list[Token]:
    places = [i for i, t in enumerate(tokens) if t.word]
    if not places:
        return tokens
    deleted = {i for i in places if rng.random() < rate}
    if len(deleted) == len(places):  # a sentence keeps at least one word
        deleted.discard(places[rng.integers(len(places))])
    kept = []
    for i, t in enumerate(tokens):
        if i not in deleted:
            kept.append(t)
        elif t.prefix or t.suffix:  # "cook?" without "cook" leaves "?"
            kept.append(Token(t.prefix + t.suffix, False))
    return kept


OPERATIONS = {
    "synonym": synonym_replacement,
    "insert": random_insertion,
    "swap": random_swap,
    "delete": random_deletion,
}


def _no_synonyms(word: str) -> tuple[str, ...]:
    return ()


class Augmenter:
    """Augmented copies of one task's rows, as its ``[augment.<task>]`` table says."""

    def __init__(self, spec: TaskSpec, config: AugmentConfig, wordnet: WordNet | None = None):
        if config.needs_wordnet and wordnet is None:
            raise AugmentError(f"augment.{spec.name}: synonym and insert need WordNet")
        self.spec = spec
        self.config = config
        self.synonyms: Synonyms = wordnet.synonyms if wordnet is not None else _no_synonyms
        self.operations = config.operations

    def rng(self, seed: int, epoch: int, row: int, copy: int) -> np.random.Generator:
        """The generator of one copy: the same (seed, epoch, row, copy), the same copy."""
        return np.random.default_rng([seed, *self.spec.name.encode(), epoch, row, copy])

    def augment_text(self, text: str, operation: str, rng: np.random.Generator) -> str:
        rate = getattr(self.config, operation)
        tokens = OPERATIONS[operation](split_words(text), rate, rng, self.synonyms)
        return join_words(tokens) or text

    def augment_row(self, texts: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
        """One augmented copy of a row's texts: one operation drawn for it, applied to each
        sentence; then, for a symmetric pair, the sentences swapped with ``pair_swap``."""
        if self.operations:
            operation = self.operations[rng.integers(len(self.operations))]
            texts = tuple(self.augment_text(t, operation, rng) for t in texts)
        if self.config.pair_swap and rng.random() < self.config.pair_swap:
            texts = texts[::-1]
        return texts

    def copy(self, texts: tuple[str, ...], seed: int, epoch: int, row: int, copy: int):
        return self.augment_row(texts, self.rng(seed, epoch, row, copy))


def build_augmenters(config) -> dict[str, Augmenter]:
    """An ``Augmenter`` for each trained task whose ``[augment.<task>]`` switches one on;
    WordNet read once, only when an operation needs it."""
    tables = {t: config.augmentation(t) for t in config.train.tasks}
    tables = {t: a for t, a in tables.items() if a.enabled}
    wordnet = None
    if any(a.needs_wordnet for a in tables.values()):
        wordnet = load_wordnet(config.data.wordnet_dir)
    return {t: Augmenter(TASKS[t], a, wordnet) for t, a in tables.items()}


# -- on the fly ----------------------------------------------------------------------------------


class AugmentedStream(TaskStream):
    """A ``TaskStream`` whose passes hold each training row and ``copies`` augmented copies
    of it, the copies made afresh for every pass and tokenised as the originals were.

    Row ``r + k * N`` of a pass (N original rows) is copy ``k`` of row ``r``; copy 0 is the
    row itself. A copy is ranked for length grouping by its original's length.
    """

    def __init__(
        self,
        data: EncodedTask,
        seed: int,
        augmenter: Augmenter,
        tokenizer,
        max_length: int,
        bi_encode: bool,
        group_lengths: bool = True,
    ):
        if data.texts is None:
            raise ValueError(f"{data.task}: augmentation needs the rows' texts")
        super().__init__(data, seed, group_lengths, tokenizer.pad_id)
        self.seed = seed
        self.augmenter = augmenter
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.bi_encode = bi_encode
        self.copies = augmenter.config.copies
        self.lengths = np.tile(data.lengths, 1 + self.copies)
        self.augmented_seen = 0  # augmented rows handed out so far, over all passes

    def take_rows(self, batch_size: int) -> np.ndarray:
        rows = super().take_rows(batch_size)
        self.augmented_seen += int(np.sum(rows >= len(self.data)))
        return rows

    def copy_texts(self, row: int, copy: int, epoch: int | None = None) -> tuple[str, ...]:
        """The texts of copy ``copy`` of row ``row`` in pass ``epoch`` (default: this one)."""
        texts = self.data.texts[row]
        if copy == 0:
            return texts
        return self.augmenter.copy(texts, self.seed, epoch or self.passes, row, copy)

    def batch(self, rows: np.ndarray) -> Batch:
        size = len(self.data)
        originals, copies = rows % size, rows // size
        made = [i for i, c in enumerate(copies) if c]
        encoded = None
        if made:
            texts = [self.copy_texts(originals[i], copies[i]) for i in made]
            encoded = encode_texts(texts, self.tokenizer, self.max_length, self.bi_encode)
        where = {row: j for j, row in enumerate(made)}
        segments = []
        for p, (ids, types) in enumerate(zip(self.data.sequences, self.data.type_ids, strict=True)):
            part_ids, part_types = [], []
            for i, r in enumerate(originals):
                if i in where:
                    part_ids.append(encoded[0][p][where[i]])
                    part_types.append(encoded[1][p][where[i]])
                else:
                    part_ids.append(ids[r])
                    part_types.append(types[r])
            segments.append(pad_sequences(part_ids, part_types, self.pad_id))
        labels = None if self.data.labels is None else torch.from_numpy(self.data.labels[originals])
        return Batch(segments, labels, rows)

    def examples(self, count: int = 10) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """(original, augmented) texts of the first ``count`` rows' first copy in epoch 1:
        what the run trains on."""
        rows = range(min(count, len(self.data)))
        return [(self.data.texts[r], self.copy_texts(r, 1, epoch=1)) for r in rows]

    def state_dict(self) -> dict:
        return super().state_dict() | {"augmented_seen": self.augmented_seen}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.augmented_seen = int(state.get("augmented_seen", 0))


def build_stream(config, data: EncodedTask, tokenizer, augmenters: dict[str, Augmenter]):
    """The training stream of one task: augmented when its table switches augmentation on."""
    train = config.train
    if data.task not in augmenters:
        return TaskStream(data, train.seed, train.length_grouping, tokenizer.pad_id)
    return AugmentedStream(
        data,
        train.seed,
        augmenters[data.task],
        tokenizer,
        config.data.max_length,
        config.bi_encoded(data.task),
        train.length_grouping,
    )


# -- a file --------------------------------------------------------------------------------------


def augment_file(
    path: str | Path, task: str, config, out: str | Path, epoch: int = 1, overwrite: bool = False
) -> tuple[int, int]:
    """Write ``out``: the labelled task file ``path``'s rows, then each row's augmented copies
    as training sees them in epoch ``epoch`` (ids ``<id>-aug<k>``), as a tab-separated file
    with the columns ``id``, the texts and the label. Returns (rows, copies written)."""
    from minbert.data.io import read_task_file
    from minbert.run.atomic import write_atomic

    spec = TASKS[task]
    table = config.augmentation(task)
    if not table.enabled:
        raise AugmentError(
            f"augment.{task}: no operation is switched on; e.g. --set augment.{task}.synonym=0.1"
        )
    source, target = Path(path), Path(out)
    if target.exists() and target.resolve() == source.resolve():
        raise AugmentError(f"{target}: the output would replace the input; write another file")
    if target.exists() and not overwrite:
        raise AugmentError(f"{target} exists; give another --out, or --overwrite to replace it")
    data = read_task_file(
        source, spec, "train", on_bad_row=config.data.on_bad_row, limit=config.data.train_limit
    )
    wordnet = load_wordnet(config.data.wordnet_dir) if table.needs_wordnet else None
    augmenter = Augmenter(spec, table, wordnet)

    def label(value) -> str:
        return f"{float(value):g}" if spec.label_kind == "score" else str(int(value))

    header = ["id", *spec.text_columns, spec.label_column]
    rows = [[i, *t, label(y)] for i, t, y in zip(data.ids, data.texts, data.labels, strict=True)]
    for k in range(1, table.copies + 1):
        for r, (row_id, texts) in enumerate(zip(data.ids, data.texts, strict=True)):
            made = augmenter.copy(texts, config.train.seed, epoch, r, k)
            rows.append([f"{row_id}-aug{k}", *made, label(data.labels[r])])
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerows([header, *rows])
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, buffer.getvalue())
    return len(data), len(rows) - len(data)
