"""BERT's masking for masked-language-model training (Devlin et al. 2019): 15% of the
non-special tokens are chosen; of those, 80% become ``[MASK]``, 10% a random token, 10% stay;
the loss is on the chosen positions only. Special tokens and padding are never chosen.
Whole-word masking chooses words (a token and its ``##`` continuations) instead of tokens.
The generator is the caller's, so masks are redrawn every epoch and a resume is exact."""

from __future__ import annotations

import numpy as np

IGNORE = -100  # the label of a position without loss (cross_entropy's ignore_index)


def mask_tokens(
    input_ids: np.ndarray,
    maskable: np.ndarray,
    rng: np.random.Generator,
    mask_id: int,
    vocab_size: int,
    rate: float = 0.15,
    words: np.ndarray | None = None,
    random_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(masked input ids, labels) for a padded batch (B, T).

    ``maskable``: True where a token may be chosen (not [CLS], [SEP], [PAD], ...). ``words``
    (B, T), optional: a word number per token (a continuation carries its word's number;
    -1 where not maskable); whole words are then chosen together. ``random_ids``: the token
    ids a random replacement draws from (default every id below ``vocab_size``)."""
    ids = np.asarray(input_ids).copy()
    maskable = np.asarray(maskable, dtype=bool)
    if words is None:
        chosen = maskable & (rng.random(ids.shape) < rate)
    else:
        chosen = np.zeros(ids.shape, dtype=bool)
        for b in range(ids.shape[0]):
            numbers = np.unique(words[b][maskable[b]])
            picked = numbers[rng.random(len(numbers)) < rate]
            chosen[b] = maskable[b] & np.isin(words[b], picked)
    labels = np.where(chosen, ids, IGNORE)
    action = rng.random(ids.shape)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    ids[to_mask] = mask_id
    pool = np.arange(vocab_size) if random_ids is None else np.asarray(random_ids)
    ids[to_random] = rng.choice(pool, int(to_random.sum()))
    return ids, labels


def word_numbers(tokens: list[list[str]], maskable: np.ndarray) -> np.ndarray:
    """For whole-word masking: each token's word number within its row, a ``##`` piece
    continuing the word before it; -1 where not maskable. ``tokens``: the rows' token
    strings, padded rows shorter than ``maskable``'s width."""
    out = np.full(maskable.shape, -1, dtype=np.int64)
    for b, row in enumerate(tokens):
        word = -1
        for t, piece in enumerate(row):
            if not maskable[b, t]:
                continue
            if not piece.startswith("##") or word < 0:
                word += 1
            out[b, t] = word
    return out
