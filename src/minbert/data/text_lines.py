"""Plain text files, one sentence a line (pre-training text: wiki sentences, a user's corpus).

Read strictly: the file must be UTF-8 (the first bad byte is named by line and byte), must
hold at least one sentence, and no line may be longer than the model will read
(``check_lengths``: the limit is in tokens, as the model counts them). Blank lines separate
nothing and are left out, and the count of them is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from minbert.data.io import DataError, is_blank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextLines:
    path: Path
    lines: list[str]
    numbers: list[int]  # each sentence's line number in the file (1-based)

    def __len__(self) -> int:
        return len(self.lines)


def read_text_lines(path: str | Path) -> TextLines:
    """The sentences of ``path``, one a line, in file order, without blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    lines, numbers, blank = [], [], 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not UTF-8 (byte {exc.start} of the line, "
                    f"0x{raw[exc.start]:02x}); save the file as UTF-8"
                ) from None
            text = text.rstrip("\r\n")
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark is not text
            if is_blank(text):
                blank += 1
                continue
            lines.append(text.strip())
            numbers.append(number)
    if not lines:
        what = "is empty" if blank == 0 else f"has only blank lines ({blank})"
        raise DataError(f"{path}: the text file {what}; it needs one sentence a line")
    if blank:
        log.info("%s: %d sentences, %d blank lines left out", path, len(lines), blank)
    return TextLines(path, lines, numbers)


def check_lengths(text: TextLines, lengths: list[int], max_length: int, key: str) -> None:
    """Every line fits in ``max_length`` tokens (``lengths``: each line's token count, the
    model's special tokens included), or an error naming the first line that does not and
    how many do not; ``key`` is the setting that sets the limit."""
    over = [i for i, n in enumerate(lengths) if n > max_length]
    if over:
        first = over[0]
        raise DataError(
            f"{text.path}:{text.numbers[first]}: {lengths[first]} tokens, over the "
            f"{max_length} of {key} ({len(over)} line(s) are); split long lines or raise {key}"
        )
