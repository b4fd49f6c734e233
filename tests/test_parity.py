"""Truth tests: our encoder and tokenizer against `transformers` on the real MiniLM weights."""

import csv

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a dev dependency: installed by make setup


@pytest.fixture(scope="module")
def hf_model(minilm_dir):
    return transformers.BertModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    return transformers.BertTokenizer.from_pretrained(str(minilm_dir))


SENTENCES = [
    "It 's a lovely film with lovely performances by Buy and Accorsi .",
    "No one goes unindicted here , which is probably for the best .",
    "What is the statement of cash flows?",
    "Café déjà vu: naïve résumé, 12,000 Ω!",
    "Two black dogs are playing on the grass.",
]


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_encoder_matches_transformers_on_a_padded_batch(minilm, hf_model, impl):
    model, tokenizer = minilm
    model.set_attention(impl)
    encs = tokenizer.encode_batch(SENTENCES[:3], SENTENCES[2:], max_length=64)
    width = max(len(e.input_ids) for e in encs)
    ids = torch.zeros(len(encs), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        types[i, : len(e.token_type_ids)] = torch.tensor(e.token_type_ids)
    mask = (ids != 0).long()
    assert (mask == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        ours = model(ids, mask, types)
        theirs = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    diff = (ours.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max().item()
    assert diff < 1e-4
    assert (ours.pooler_output - theirs.pooler_output).abs().max().item() < 1e-4
    model.set_attention("sdpa")


def _column(path, names):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [tuple(r[n] for n in names) for r in rows]


@pytest.mark.parametrize(
    "file,columns",
    [
        ("ids-sst-dev.csv", ("sentence",)),
        ("quora-dev.csv", ("sentence1", "sentence2")),
        ("sts-dev.csv", ("sentence1", "sentence2")),
    ],
)
def test_tokenizer_matches_transformers_on_dev_files(minilm, hf_tokenizer, data_dir, file, columns):
    _, tokenizer = minilm
    rows = _column(data_dir / file, columns)
    assert len(rows) > 800
    for col in range(len(columns)):  # every sentence alone
        texts = [r[col] for r in rows]
        ours = [e.input_ids for e in tokenizer.encode_batch(texts, max_length=512)]
        theirs = hf_tokenizer(texts)["input_ids"]
        mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        assert not mismatches, (
            f"{file}: first mismatch at row {mismatches[0]}: {texts[mismatches[0]]!r}"
        )
    if len(columns) == 2:  # pairs, with longest-first truncation at a short length
        a, b = [r[0] for r in rows], [r[1] for r in rows]
        for max_length in (512, 24):
            ours = tokenizer.encode_batch(a, b, max_length=max_length)
            theirs = hf_tokenizer(a, b, truncation="longest_first", max_length=max_length)
            assert [e.input_ids for e in ours] == theirs["input_ids"]
            assert [e.token_type_ids for e in ours] == theirs["token_type_ids"]


def test_single_sentence_truncation_matches(minilm, hf_tokenizer):
    _, tokenizer = minilm
    text = " ".join(SENTENCES)
    ours = tokenizer.encode(text, max_length=16)
    assert ours.input_ids == hf_tokenizer(text, truncation=True, max_length=16)["input_ids"]
    assert ours.truncated and len(ours.input_ids) == 16


def test_export_loads_in_transformers(minilm, tmp_path):
    from minbert.model.loading import export_pretrained

    model, tokenizer = minilm
    out = export_pretrained(model, tokenizer, tmp_path / "export")
    hf = transformers.BertModel.from_pretrained(str(out)).eval()
    enc = tokenizer.encode(SENTENCES[0])
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids)).last_hidden_state
        theirs = hf(input_ids=ids).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-4
    hf_tok = transformers.BertTokenizer.from_pretrained(str(out))
    assert hf_tok(SENTENCES[3])["input_ids"] == tokenizer.encode(SENTENCES[3]).input_ids
