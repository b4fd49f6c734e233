import numpy as np
import pytest

from minbert.data.io import DataError, read_task_file, write_predictions
from minbert.data.tasks import TASKS

SST_HEADER = "\tid\tsentence\tsentiment\n"
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"


def _write(tmp_path, text: str | bytes, name="f.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_reads_rows_and_labels(tmp_path):
    path = _write(tmp_path, SST_HEADER + '0\ta1\t good film\t3\n1\ta2\t"quoted ""x"""\t0\n')
    data = read_task_file(path, TASKS["sst"], "train")
    assert data.ids == ["a1", "a2"]
    assert data.texts == [(" good film",), ('quoted "x"',)]
    assert data.labels.tolist() == [3, 0]


@pytest.mark.parametrize(
    "row,field,problem",
    [
        ("0\tb1\t fine\t7\n", "sentiment", "not a class in 0..4"),
        ("0\tb1\t fine\tpos\n", "sentiment", "not a class number"),
        ("0\tb1\t fine\t2.5\n", "sentiment", "not a class in 0..4"),
        ("0\tb1\t   \t2\n", "sentence", "empty text"),
        ("0\tb1\t fine\n", "row", "3 columns, expected 4"),
        ('0\tb1\t"open quote\t2\n', "line", "malformed quoting"),
        ("0\t\t fine\t2\n", "id", "empty"),
    ],
)
def test_each_bad_row_is_reported_with_file_line_and_field(tmp_path, row, field, problem):
    path = _write(tmp_path, SST_HEADER + "0\ta1\t good\t1\n" + row + "2\ta3\t ok\t4\n")
    with pytest.raises(DataError) as info:
        read_task_file(path, TASKS["sst"], "train")
    assert f"{path}:3: {field}: " in str(info.value)
    assert problem in str(info.value)
    # skip mode keeps the good rows on both sides of the bad one
    data = read_task_file(path, TASKS["sst"], "train", on_bad_row="skip")
    assert data.ids == ["a1", "a3"]
    assert [b.line for b in data.skipped] == [3]


def test_invalid_utf8_is_reported(tmp_path):
    path = _write(tmp_path, SST_HEADER.encode() + b"0\ta1\t caf\xe9\t1\n")
    with pytest.raises(DataError, match=r"f.csv:2: line: invalid UTF-8 at byte 9"):
        read_task_file(path, TASKS["sst"], "train")


def test_score_range_and_binary_labels(tmp_path):
    path = _write(tmp_path, STS_HEADER + "0\ta\tx\ty\t5.5\n1\tb\tx\ty\tnan\n2\tc\tx\ty\t4.2\n")
    with pytest.raises(DataError) as info:
        read_task_file(path, TASKS["sts"], "train")
    message = str(info.value)
    assert "2 bad row(s)" in message and ":2: similarity: '5.5' is outside [0, 5]" in message
    assert ":3: similarity: 'nan' is outside" in message
    quora = _write(tmp_path, "\tid\tsentence1\tsentence2\tis_duplicate\n0\ta\tx\ty\t2.0\n", "q.csv")
    with pytest.raises(DataError, match="is_duplicate: '2.0' is not 0 or 1"):
        read_task_file(quora, TASKS["quora"], "train")


def test_missing_column_and_file(tmp_path):
    path = _write(tmp_path, "\tid\ttext\tsentiment\n0\ta\tx\t1\n")
    with pytest.raises(DataError, match=r"f.csv:1: header: missing column\(s\) \['sentence'\]"):
        read_task_file(path, TASKS["sst"], "train")
    with pytest.raises(DataError, match="file not found"):
        read_task_file(tmp_path / "nope.csv", TASKS["sst"], "train")


def test_repeated_id_is_reported(tmp_path):
    path = _write(tmp_path, SST_HEADER + "0\ta\t x\t1\n1\ta\t y\t2\n")
    with pytest.raises(DataError, match="f.csv:3: id: 'a' repeats line 2"):
        read_task_file(path, TASKS["sst"], "train")


def test_test_split_needs_no_label(tmp_path):
    path = _write(tmp_path, "0\t\tid\tsentence\n1\t0.0\tt1\t hello\n")
    data = read_task_file(path, TASKS["sst"], "test")
    assert data.labels is None and data.ids == ["t1"]


def test_shipped_files_read_without_bad_rows(data_dir):
    expected = {
        "sst": (8544, 1101, 2210),
        "quora": (15212, 2500, 2500),
        "sts": (6040, 863, 1725),
        "cfimdb": (1707, 245, 488),
    }
    for task, counts in expected.items():
        spec = TASKS[task]
        for split, n in zip(("train", "dev", "test"), counts, strict=True):
            data = read_task_file(data_dir / spec.files[split], spec, split)
            assert len(data) == n and not data.skipped


def test_prediction_file_format(tmp_path):
    write_predictions(tmp_path / "p.csv", ["a", "b"], np.array([1, 0]), "class")
    assert (tmp_path / "p.csv").read_bytes().decode() == "id,prediction\na,1\nb,0\n"
    write_predictions(tmp_path / "s.csv", ["a"], np.array([3.14159]), "score")
    assert (tmp_path / "s.csv").read_text().splitlines()[1] == "a,3.1416"


def test_skip_mode_says_how_many_rows_and_where(tmp_path, caplog):
    path = _write(tmp_path, SST_HEADER + "0\ta1\t good\t1\n1\ta2\t bad\t9\n2\ta3\t\t4\n")
    with caplog.at_level("WARNING", logger="minbert"):
        data = read_task_file(path, TASKS["sst"], "train", on_bad_row="skip")
    assert data.ids == ["a1"]
    assert f"{path}: skipped 2 bad row(s) at line(s) 3, 4" in caplog.text


def test_overlong_rows_are_truncated_and_counted(tmp_path, caplog, tiny_tokenizer):
    from minbert.data.batching import encode_task

    long = " ".join(["good"] * 50)
    path = _write(tmp_path, SST_HEADER + f"0\ta1\t {long}\t1\n1\ta2\t bad\t0\n")
    with caplog.at_level("INFO", logger="minbert"):
        encoded = encode_task(
            read_task_file(path, TASKS["sst"], "train"), tiny_tokenizer, 16, False
        )
    assert encoded.truncated == 1 and max(encoded.lengths) == 16
    assert "sst train: 1 of 2 rows truncated to 16 tokens" in caplog.text
