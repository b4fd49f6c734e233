"""Masked language modelling (Devlin et al. 2019) on the tasks' training sentences and/or
text files: task-adaptive pre-training (Gururangan et al. 2020), or an auxiliary loss while
fine-tuning.

Masks are drawn when a batch is made, from a generator seeded by (run seed, pass over the
text, sentence): every pass masks anew, a resume redraws the same masks, and under torchrun
a sentence is masked the same whichever rank takes it. The loss (cross-entropy on the chosen
positions) runs the vocabulary projection on those positions alone. A held-out slice of the
text, masked once and the same way every epoch, gives the dev metrics: masked-token accuracy
and perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.data.batching import Batch, EncodedTask, Segment, TaskStream, eval_batches, hold_out
from minbert.data.masking import IGNORE, mask_tokens, word_numbers
from minbert.data.sentences import TextConfig, load_sentences
from minbert.device import autocast
from minbert.model.mlm import MLMHead
from minbert.model.tokenizer import SPECIAL_TOKENS, Tokenizer
from minbert.objectives.base import Loss, PretrainObjective
from minbert.settings import ConfigError, setting


@dataclass(frozen=True)
class MLMConfig(TextConfig):
    weight: float = setting(
        0.0,
        "loss weight of masked language modelling (0: off). With no train.tasks "
        "(minbert pretrain) every step holds an MLM batch; with tasks, a share of the steps",
        min=0.0,
    )
    share: float = setting(
        1.0,
        "with train.tasks: the fraction of optimiser steps that also take an MLM batch of "
        "train.batch_size sentences (spread evenly over each epoch)",
        min=0.0,
        max=1.0,
    )
    rate: float = setting(0.15, "fraction of the non-special tokens chosen", min=0.01, max=0.9)
    whole_word: bool = setting(
        False, "choose whole words (a token and its ## pieces) together, not single tokens"
    )
    heldout: float = setting(
        0.02,
        "fraction of the sentences held out of training to score masked-token accuracy and "
        "perplexity after each epoch",
        min=0.0,
        max=0.5,
    )
    heldout_max: int = setting(2000, "at most this many held-out sentences", min=1)

    def check(self, key: str) -> None:
        self.check_text(key)
        if self.heldout == 0:
            raise ConfigError(f"{key}.heldout: must be more than 0 (the dev metrics need text)")


class Masker:
    """BERT's masking of one tokenizer's sentences, a generator per (seed, pass, sentence)."""

    TAG = int.from_bytes(b"mlm", "little")

    def __init__(self, tokenizer: Tokenizer, config: MLMConfig, seed: int):
        self.config, self.seed = config, seed
        self.mask_id, self.vocab_size = tokenizer.mask_id, len(tokenizer)
        self.special = np.array(sorted(tokenizer.vocab[t] for t in SPECIAL_TOKENS))
        self.random_ids = np.setdiff1d(np.arange(self.vocab_size), self.special)
        self.pieces = np.empty(self.vocab_size, dtype=object)
        for token, index in tokenizer.vocab.items():
            self.pieces[index] = token

    def mask(self, segment: Segment, rows: np.ndarray, draw: int) -> tuple[Segment, Tensor]:
        """The segment with its rows masked, and the labels (B, T) (``IGNORE`` where no loss)."""
        ids = segment.input_ids.numpy()
        maskable = (segment.attention_mask.numpy() == 1) & ~np.isin(ids, self.special)
        masked, labels = np.empty_like(ids), np.empty_like(ids)
        for b, row in enumerate(rows):
            rng = np.random.default_rng([self.seed, self.TAG, draw, int(row)])
            words = None
            if self.config.whole_word:
                words = word_numbers([list(self.pieces[ids[b]])], maskable[b : b + 1])
            masked[b : b + 1], labels[b : b + 1] = mask_tokens(
                ids[b : b + 1],
                maskable[b : b + 1],
                rng,
                self.mask_id,
                self.vocab_size,
                self.config.rate,
                words,
                self.random_ids,
            )
        out = Segment(torch.from_numpy(masked), segment.attention_mask, segment.token_type_ids)
        return out, torch.from_numpy(labels)


class MaskedStream(TaskStream):
    """The training sentences, masked anew on every pass."""

    def __init__(self, data: EncodedTask, masker: Masker, seed: int, group: bool, pad_id: int):
        super().__init__(data, seed, group, pad_id)
        self.masker = masker

    def batch(self, rows: np.ndarray) -> Batch:
        segment = self.data.batch(rows, self.pad_id).segments[0]
        masked, labels = self.masker.mask(segment, rows, self.passes)
        return Batch([masked], labels, rows)


def masked_lm_loss(head: MLMHead, hidden: Tensor, labels: Tensor, detach_decoder: bool = False):
    """(cross-entropy, correct predictions, positions) over the chosen positions of (B, T, H)
    token states; the vocabulary projection runs on those positions alone."""
    chosen = labels != IGNORE  # (B, T)
    logits = head(hidden[chosen], detach_decoder).float()  # (n, vocab)
    targets = labels[chosen]
    if not len(targets):
        return logits.sum() * 0.0, 0, 0
    loss = F.cross_entropy(logits, targets)
    return loss, int((logits.argmax(-1) == targets).sum()), len(targets)


class MLMObjective(PretrainObjective):
    name = "mlm"
    Config = MLMConfig

    @staticmethod
    def build_head(config: MLMConfig, encoder: nn.Module) -> nn.Module:
        return MLMHead(encoder.config, encoder.embeddings.word_embeddings)

    def __init__(self, run, config: MLMConfig, precision, tokenizer: Tokenizer, warmup: int):
        super().__init__(config, precision, warmup)
        seed = run.train.seed
        text = load_sentences(
            self.name, config, run.data.dir, tokenizer, run.data.on_bad_row, "pretrain.mlm"
        )
        text, heldout = hold_out(text, config.heldout, seed, config.heldout_max)
        self.masker = Masker(tokenizer, config, seed)
        self.stream = MaskedStream(
            text, self.masker, seed, run.train.length_grouping, tokenizer.pad_id
        )
        # The dev text masked once, with a draw no training pass uses.
        self.dev_batches = [
            MaskedStream(heldout, self.masker, seed, False, tokenizer.pad_id).batch(rows)
            for rows in eval_batches(heldout.lengths, run.train.eval_batch_size)
        ]
        self.dev_sentences = len(heldout)

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        head = model.objective_heads[self.name]
        with self.encoder_context():
            hidden = model.encoder(*batch.segments[0].as_tuple()).last_hidden_state
        with self.precision():
            value, _, _ = masked_lm_loss(head, hidden, batch.labels, self.warming_up)
        return self.weighted(value)

    @torch.inference_mode()
    def dev_metrics(self, model: nn.Module, device, bf16: bool) -> dict[str, float]:
        was_training = model.training
        model.eval()
        head = model.objective_heads[self.name]
        total, correct, count = 0.0, 0, 0
        for batch in self.dev_batches:
            batch = batch.to(device)
            with autocast(device, bf16):
                hidden = model.encoder(*batch.segments[0].as_tuple()).last_hidden_state
                loss, right, n = masked_lm_loss(head, hidden, batch.labels)
            total, correct, count = total + loss.item() * n, correct + right, count + n
        model.train(was_training)
        mean = total / max(count, 1)
        return {"mlm_accuracy": correct / max(count, 1), "mlm_perplexity": math.exp(mean)}
