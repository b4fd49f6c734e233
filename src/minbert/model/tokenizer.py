"""BERT WordPiece tokenisation through the ``tokenizers`` library.

Built from a ``vocab.txt`` exactly as BERT uncased does it: clean text, split CJK
characters, lowercase and strip accents, split on whitespace and punctuation, WordPiece
with ``##`` continuations, then ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` with segment
ids 0/1. Truncation is longest-first for pairs, as ``transformers`` does it.

With ``ptb_text`` the text is first turned back from Penn Treebank tokenisation, as SST and
CFIMDB are written, into the plain text the pretrained model read (``undo_ptb``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Penn Treebank escapes and splits, and the plain text they stand for. Only these matter to
# WordPiece, which splits on punctuation anyway ("film 's" and "film's" give the same tokens):
# "-LRB-" becomes five tokens (- l ##rb -), and "does n't" reads a lone "n" where the
# pretrained model saw "doesn ' t" for a negation.
_PTB = [
    (re.compile(p, re.IGNORECASE), plain)
    for p, plain in (
        (r"-LRB-", "("),
        (r"-RRB-", ")"),
        (r"-LSB-", "["),
        (r"-RSB-", "]"),
        (r"-LCB-", "{"),
        (r"-RCB-", "}"),
        (r"``|''", '"'),
        (r"\\([/*])", r"\1"),  # \/ and \*
        (r"(\w) (n't)\b", r"\1\2"),  # does n't -> doesn't, ca n't -> can't, wo n't -> won't
    )
]


def undo_ptb(text: str) -> str:
    """Plain text from Penn Treebank tokenisation; other text comes back unchanged."""
    for pattern, plain in _PTB:
        text = pattern.sub(plain, text)
    return text


@dataclass(frozen=True)
class Encoding:
    """One tokenised input, without padding."""

    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool  # True when tokens were dropped to fit max_length


class Tokenizer:
    """WordPiece tokenizer with BERT's special tokens and segment ids."""

    def __init__(self, vocab_file: str | Path, lowercase: bool = True, ptb_text: bool = False):
        self.vocab_file = Path(vocab_file)
        self.ptb_text = ptb_text
        vocab = _read_vocab(self.vocab_file)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{self.vocab_file}: vocabulary lacks special tokens {missing}")
        self.vocab = vocab
        self.lowercase = lowercase
        self.pad_id = vocab["[PAD]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.mask_id = vocab["[MASK]"]
        tok = _HFTokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        self._tok = tok

    def __len__(self) -> int:
        return len(self.vocab)

    def _set_length(self, max_length: int | None) -> None:
        if max_length is None:
            self._tok.no_truncation()
        else:
            if max_length < 4:
                raise ValueError(f"max_length must be at least 4, got {max_length}")
            self._tok.enable_truncation(max_length, strategy="longest_first")

    def encode(
        self, text: str, text_pair: str | None = None, max_length: int | None = 512
    ) -> Encoding:
        return self.encode_batch([text], None if text_pair is None else [text_pair], max_length)[0]

    def encode_batch(
        self,
        texts: list[str],
        text_pairs: list[str] | None = None,
        max_length: int | None = 512,
    ) -> list[Encoding]:
        """Tokenise many inputs at once (parallel in the Rust library)."""
        self._set_length(max_length)
        if self.ptb_text:
            texts = [undo_ptb(t) for t in texts]
            text_pairs = None if text_pairs is None else [undo_ptb(t) for t in text_pairs]
        if text_pairs is None:
            raw = self._tok.encode_batch(texts)
        else:
            if len(text_pairs) != len(texts):
                raise ValueError(f"{len(texts)} first texts but {len(text_pairs)} second texts")
            raw = self._tok.encode_batch(list(zip(texts, text_pairs, strict=True)))
        return [Encoding(e.ids, e.type_ids, bool(e.overflowing)) for e in raw]

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` without special tokens (for inspection)."""
        self._set_length(None)
        text = undo_ptb(text) if self.ptb_text else text
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def read_vocab_tokens(path: Path) -> list[str]:
    """The tokens of a ``vocab.txt`` in id order, one a line; ValueError naming the file when
    it is not UTF-8."""
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}: not UTF-8 text (line {line}: {exc.reason})") from None
    # Lines end as in a text-mode file ("\n", "\r\n" or "\r"), as HF's load_vocab reads them;
    # str.splitlines would also split on characters some vocabularies hold as tokens.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _read_vocab(path: Path) -> dict[str, int]:
    # As in HF's load_vocab, a repeated token keeps its last index.
    return {token: index for index, token in enumerate(read_vocab_tokens(path))}
