"""Property-based tests: on arbitrary input, the readers and parsers either succeed or raise
the project's own error types (which name the file, line and field), never anything else."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minbert.config import ConfigError, load_config
from minbert.data.io import DataError, read_task_file
from minbert.data.tasks import TASKS

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
HEADERS = {
    "sst": "\tid\tsentence\tsentiment\n",
    "quora": "\tid\tsentence1\tsentence2\tis_duplicate\n",
    "sts": "\tid\tsentence1\tsentence2\tsimilarity\n",
}
# Bytes that make TSV rows interesting: separators, quotes, newlines, digits, invalid UTF-8.
ROW_BYTES = st.lists(
    st.sampled_from(
        [
            b"\t",
            b'"',
            b"\n",
            b"\r",
            b"0",
            b"1",
            b"4",
            b"5.0",
            b"-",
            b"a",
            b" ",
            b"\xff",
            b"\xc3",
            "é".encode(),
        ]
    ),
    max_size=40,
).map(b"".join)


def _read(task: str, content: bytes, on_bad_row: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.csv"
        path.write_bytes(content)
        return read_task_file(path, TASKS[task], "train", on_bad_row=on_bad_row)


@SETTINGS
@given(
    task=st.sampled_from(sorted(HEADERS)),
    rows=st.one_of(ROW_BYTES, st.binary(max_size=200)),
    with_header=st.booleans(),
    on_bad_row=st.sampled_from(["error", "skip"]),
)
def test_tsv_reader_raises_only_data_errors(task, rows, with_header, on_bad_row):
    content = (HEADERS[task].encode() if with_header else b"") + rows
    try:
        data = _read(task, content, on_bad_row)
    except DataError as exc:
        assert "f.csv" in str(exc)  # every message names the file
        return
    # Whatever was read is complete: one id, text tuple and label per row.
    assert len(data.ids) == len(data.texts) == len(data.labels)
    assert all(all(t.strip() for t in texts) for texts in data.texts)


@SETTINGS
@given(text=st.text(max_size=300), pair=st.one_of(st.none(), st.text(max_size=300)))
def test_tokenizer_accepts_any_text(tiny_tokenizer, text, pair):
    (encoding,) = tiny_tokenizer.encode_batch([text], None if pair is None else [pair], 16)
    ids = encoding.input_ids
    assert 2 <= len(ids) <= 16
    assert ids[0] == tiny_tokenizer.cls_id and ids[-1] == tiny_tokenizer.sep_id
    assert all(0 <= i < len(tiny_tokenizer) for i in ids)
    assert len(encoding.token_type_ids) == len(ids)


KEYS = [
    "train.lr",
    "train.epochs",
    "train.tasks",
    "train.schedule",
    "heads.sts.kind",
    "data.max_length",
    "train.task_weights",
    "model.mode",
    "train",
    "heads",
    "x.y",
    "train.lr.x",
]
VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "1",
            "-1",
            "1e9",
            "true",
            "[1, 2]",
            "['sst']",
            "{sts = 2.0}",
            "nan",
            "inf",
            '"x"',
            "[",
            "{",
        ]
    ),
)


@SETTINGS
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), VALUES).map("=".join), max_size=4))
def test_config_overrides_raise_only_config_errors(overrides):
    with contextlib.suppress(ConfigError):
        load_config(None, overrides)


@SETTINGS
@given(content=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_config_files_raise_only_config_errors(tmp_path, content):
    path = tmp_path / "c.toml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as exc:
        assert "c.toml" in str(exc)
