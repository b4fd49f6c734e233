import pytest

from minbert.model.tokenizer import Tokenizer, undo_ptb


@pytest.mark.parametrize(
    "ptb, plain",
    [
        ("it does n't work", "it doesn't work"),
        ("I ca n't , you wo n't", "I can't , you won't"),
        ("Does N'T", "DoesN'T"),
        ("a -LRB- mostly -RRB- fine film", "a ( mostly ) fine film"),
        ("-LSB- sic -RSB- -LCB- x -RCB-", "[ sic ] { x }"),
        ("`` Conan '' returns", '" Conan " returns'),
        (r"co-writer\/director \* star", "co-writer/director * star"),
    ],
)
def test_undo_ptb(ptb, plain):
    assert undo_ptb(ptb) == plain


@pytest.mark.parametrize(
    "text",
    [
        "How do I learn Python? I don't know where to start.",
        "A man is playing a guitar (badly), 'he' said.",
        "n't at the start",
    ],
)
def test_undo_ptb_leaves_plain_text_alone(text):
    assert undo_ptb(text) == text


def test_ptb_text_tokenises_like_the_plain_sentence(minilm_dir):
    # The SST sentence as shipped, and the same sentence as plain text.
    ptb = "The Rock does n't -LRB- quite -RRB- make `` Conan '' a co-writer\\/director 's film ."
    plain = "The Rock doesn't (quite) make \"Conan\" a co-writer/director's film."
    vocab = minilm_dir / "vocab.txt"
    as_shipped, undone = Tokenizer(vocab), Tokenizer(vocab, ptb_text=True)
    assert as_shipped.encode(ptb).input_ids != as_shipped.encode(plain).input_ids
    assert undone.encode(ptb).input_ids == as_shipped.encode(plain).input_ids
    assert undone.tokenize(ptb) == as_shipped.tokenize(plain)
    pair = undone.encode_batch([ptb], [ptb])[0].input_ids
    assert pair == as_shipped.encode_batch([plain], [plain])[0].input_ids
