"""The splits a run reads, as its config says (file, row limits, bi-encoding, held-out rows),
and the training streams that serve their rows."""

from __future__ import annotations

import logging
from pathlib import Path

from minbert.data.augment import build_augmenters, build_stream
from minbert.data.batching import EncodedTask, TaskStream, encode_task, hold_out, random_share
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def load_split(config, task: str, split: str, tokenizer: Tokenizer) -> EncodedTask:
    """Read and tokenise one split of one task (``data.*`` limits, the head's encoding)."""
    spec = TASKS[task]
    limit = {"train": config.data.train_limit, "dev": config.data.dev_limit}.get(split, 0)
    data = read_task_file(
        Path(config.data.dir) / spec.files[split],
        spec,
        split,
        on_bad_row=config.data.on_bad_row,
        limit=limit,
    )
    return encode_task(data, tokenizer, config.data.max_length, bi_encode=config.bi_encoded(task))


def load_training_data(
    config, tokenizer: Tokenizer
) -> tuple[dict[str, EncodedTask], dict[str, EncodedTask]]:
    """Each trained task's training rows, and the rows held out of them to calibrate a
    task's threshold (``heads.<task>.calibrate``; never trained on)."""
    train, heldout = {}, {}
    for t in config.train.tasks:
        train[t] = load_split(config, t, "train", tokenizer)
        if config.data.train_fraction < 1:
            train[t] = random_share(train[t], config.data.train_fraction, config.train.seed)
            log.info(
                "%s: training on %d rows, a random %g of the file (data.train_fraction)",
                t,
                len(train[t]),
                config.data.train_fraction,
            )
        if config.head(t).calibrate:
            train[t], heldout[t] = hold_out(train[t], config.head(t).calibrate, config.train.seed)
            log.info(
                "%s: %d training rows held out to calibrate the decision threshold, %d "
                "left to train on",
                t,
                len(heldout[t]),
                len(train[t]),
            )
    return train, heldout


def training_streams(
    config, train_data: dict[str, EncodedTask], tokenizer: Tokenizer
) -> dict[str, TaskStream]:
    """Each task's training stream: its rows, with augmented copies where its
    ``[augment.<task>]`` table switches augmentation on."""
    augmenters = build_augmenters(config)
    return {t: build_stream(config, d, tokenizer, augmenters) for t, d in train_data.items()}
