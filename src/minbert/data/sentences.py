"""The text a pre-training objective reads: the sentences of tasks' **training** splits (never
dev or test) and of plain text files, each distinct sentence once, tokenised once.

``TextConfig`` is the part of an objective's table that says where its text comes from; the
objective (``objectives/mlm.py``, ``objectives/simcse.py``) adds its own settings to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from minbert.data.batching import EncodedTask, encode_texts
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.data.text_lines import check_lengths, read_text_lines
from minbert.model.tokenizer import Tokenizer
from minbert.settings import ConfigError, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextConfig:
    tasks: list[str] = setting(
        ["sst", "quora", "sts"],
        "tasks whose training sentences are text for this objective (their train files "
        "only: never dev or test text)",
    )
    files: list[str] = setting(
        [], "plain text files, one sentence a line (UTF-8), read besides the tasks' sentences"
    )
    max_length: int = setting(
        128, "tokens per sentence (longer ones are cut to it, and counted in the log)", min=8
    )
    max_line_tokens: int = setting(
        512,
        "a text file's line longer than this many tokens is an error (a file that is not "
        "one sentence a line), not cut",
        min=8,
    )

    def check_text(self, key: str) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise ConfigError(f"{key}.tasks: unknown task {task!r}; known: {sorted(TASKS)}")
        if not self.tasks and not self.files:
            raise ConfigError(f"{key}: no text; name tasks (its .tasks) or text files (.files)")
        if self.max_length > self.max_line_tokens:
            raise ConfigError(f"{key}.max_length: over {key}.max_line_tokens")


def task_sentences(data_dir: str | Path, task: str, on_bad_row: str = "error") -> list[str]:
    """Every sentence of ``task``'s training file (both sentences of a pair), in file order."""
    spec = TASKS[task]
    data = read_task_file(Path(data_dir) / spec.files["train"], spec, "train", None, on_bad_row)
    return [text for row in data.texts for text in row]


def load_sentences(
    name: str,
    text: TextConfig,
    data_dir: str | Path,
    tokenizer: Tokenizer,
    on_bad_row: str = "error",
    key: str = "",
) -> EncodedTask:
    """The distinct sentences of ``text``'s tasks and files, tokenised, as a single-sentence
    ``EncodedTask`` named ``name`` (its ``ids`` say where each sentence was first seen:
    ``task:N`` or ``file:line``)."""
    sentences: dict[str, str] = {}  # text -> where it was first seen
    for task in text.tasks:
        for i, sentence in enumerate(task_sentences(data_dir, task, on_bad_row)):
            sentences.setdefault(sentence.strip(), f"{task}:{i}")
    for file in text.files:
        lines = read_text_lines(file)
        lengths = [len(e.input_ids) for e in tokenizer.encode_batch(lines.lines, None, None)]
        check_lengths(lines, lengths, text.max_line_tokens, f"{key}.max_line_tokens")
        for line, number in zip(lines.lines, lines.numbers, strict=True):
            sentences.setdefault(line, f"{file}:{number}")
    sentences.pop("", None)
    texts = [(s,) for s in sentences]
    sequences, type_ids, cut = encode_texts(texts, tokenizer, text.max_length, bi_encode=False)
    log.info(
        "%s: %d distinct sentences (%s), %d cut to %d tokens",
        name,
        len(texts),
        ", ".join([*text.tasks, *text.files]),
        int(cut.sum()),
        text.max_length,
    )
    return EncodedTask(
        task=name,
        split="train",
        ids=list(sentences.values()),
        sequences=sequences,
        type_ids=type_ids,
        labels=None,
        truncated=int(cut.sum()),
        texts=texts,
    )
