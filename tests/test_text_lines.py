"""Plain text files for pre-training: strict UTF-8, no empty files, lines within the limit."""

import logging

import pytest

from minbert.data.io import DataError
from minbert.data.text_lines import check_lengths, read_text_lines


def test_sentences_come_in_order_with_their_line_numbers(tmp_path, caplog):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffFirst one.\r\n\n  \nSecond , two .\nthird\n".encode())
    with caplog.at_level(logging.INFO, logger="minbert"):
        text = read_text_lines(path)
    assert text.lines == ["First one.", "Second , two .", "third"]
    assert text.numbers == [1, 4, 5]
    assert "3 sentences, 2 blank lines left out" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the text file is empty"),
        (b"\n \n", r"has only blank lines \(2\)"),
        ("ok\ncaf\u00e9\n".encode("latin-1"), r"t.txt:2: not UTF-8 \(byte 3 of the line, 0xe9\)"),
    ],
)
def test_bad_text_files_are_named(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_text_lines(path)


def test_a_missing_text_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.txt: no such text file"):
        read_text_lines(tmp_path / "nothing.txt")


def test_a_line_over_the_token_limit_names_the_file_line_and_key(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("short\n\nmuch longer line\nlong again\n")
    text = read_text_lines(path)
    check_lengths(text, [3, 5, 4], 5, "pretrain.max_length")  # within: nothing raised
    with pytest.raises(DataError, match=r"t.txt:3: 5 tokens, over the 4 of pretrain.max_length"):
        check_lengths(text, [3, 5, 4], 4, "pretrain.max_length")
