"""The MLM head (HF names, tied decoder: BertForMaskedLM's logits) and BERT's masking
(rates on a large sample, special tokens never chosen, whole words, determinism)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minbert.data.masking import IGNORE, mask_tokens, word_numbers
from minbert.model.bert import BertModel
from minbert.model.mlm import MLMHead

transformers = pytest.importorskip("transformers")  # a dev dependency: installed by make setup

MASK, VOCAB, SPECIAL = 4, 1000, 5  # ids below SPECIAL are special tokens in these batches


def _batch(rng, rows=400, width=64):
    lengths = rng.integers(8, width, rows)
    ids = rng.integers(SPECIAL, VOCAB, (rows, width))
    ids[:, 0] = 2  # [CLS]
    for b, n in enumerate(lengths):
        ids[b, n - 1] = 3  # [SEP]
        ids[b, n:] = 0  # padding
    maskable = ids >= SPECIAL
    return ids, maskable


def test_masking_rates_on_a_large_sample_and_never_a_special_token():
    rng = np.random.default_rng(0)
    ids, maskable = _batch(rng)
    masked, labels = mask_tokens(
        ids, maskable, rng, MASK, VOCAB, random_ids=np.arange(SPECIAL, VOCAB)
    )
    chosen = labels != IGNORE
    assert not chosen[~maskable].any()  # [CLS], [SEP], padding: never
    assert (masked[~maskable] == ids[~maskable]).all()
    assert chosen.sum() / maskable.sum() == pytest.approx(0.15, abs=0.005)
    assert (labels[chosen] == ids[chosen]).all()
    as_mask = (masked[chosen] == MASK).mean()
    unchanged = (masked[chosen] == ids[chosen]).mean()
    replaced = 1 - as_mask - unchanged
    assert as_mask == pytest.approx(0.8, abs=0.01)
    # a random replacement can draw the token itself (1 in 995): counted as unchanged
    assert replaced == pytest.approx(0.1, abs=0.01) and unchanged == pytest.approx(0.1, abs=0.01)
    drawn = masked[chosen & (masked != ids) & (masked != MASK)]
    assert len(drawn) and (drawn >= SPECIAL).all()  # random tokens from random_ids only


def test_masks_come_from_the_generator_alone():
    ids, maskable = _batch(np.random.default_rng(1), rows=20)
    a = mask_tokens(ids, maskable, np.random.default_rng(5), MASK, VOCAB)
    b = mask_tokens(ids, maskable, np.random.default_rng(5), MASK, VOCAB)
    c = mask_tokens(ids, maskable, np.random.default_rng(6), MASK, VOCAB)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_whole_word_masking_chooses_every_piece_of_a_word():
    tokens = [["[CLS]", "the", "emb", "##ed", "##ding", "is", "un", "##real", "[SEP]"]] * 3000
    maskable = np.array([[t not in ("[CLS]", "[SEP]") for t in tokens[0]]] * 3000)
    words = word_numbers(tokens, maskable)
    assert words[0].tolist() == [-1, 0, 1, 1, 1, 2, 3, 3, -1]
    ids = np.tile(np.arange(10, 19), (3000, 1))
    _, labels = mask_tokens(ids, maskable, np.random.default_rng(2), MASK, VOCAB, words=words)
    chosen = labels != IGNORE
    for word in range(4):
        cols = words[0] == word
        assert (chosen[:, cols].all(1) | ~chosen[:, cols].any(1)).all()  # all pieces or none
    assert chosen[:, words[0] == 1].all(1).mean() == pytest.approx(0.15, abs=0.02)


def test_the_mlm_head_gives_bert_for_masked_lms_logits(tiny_config):
    torch.manual_seed(0)
    encoder = BertModel(tiny_config).eval()
    head = MLMHead(tiny_config, encoder.embeddings.word_embeddings)
    with torch.no_grad():
        head.bias.normal_()  # a bias that is not all zeros
    hf_config = transformers.BertConfig(**tiny_config.__dict__)
    hf = transformers.BertForMaskedLM(hf_config).eval()
    state = {f"bert.{k}": v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = hf.load_state_dict(state | head.hf_state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]
    ids = torch.randint(5, tiny_config.vocab_size, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ours = head(encoder(ids, mask).last_hidden_state)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-4)
    # the decoder is the word-embedding matrix itself
    assert head.decoder_weight.data_ptr() == encoder.embeddings.word_embeddings.weight.data_ptr()
    again = MLMHead(tiny_config, encoder.embeddings.word_embeddings)
    again.load_hf_state_dict(head.hf_state_dict())
    with torch.no_grad():
        assert torch.equal(again(encoder(ids, mask).last_hidden_state), ours)
