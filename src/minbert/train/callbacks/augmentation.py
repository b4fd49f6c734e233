"""What augmentation did (``[augment.<task>]``): ten examples per task in the log at the
start, the augmented rows each task has seen in every epoch record (``augmented_rows``), and
``RUN/augment.json`` (settings, counts, examples) for the report."""

from __future__ import annotations

import json
import logging

from minbert.data.augment import AugmentedStream
from minbert.run.atomic import write_atomic
from minbert.train.callbacks.base import Callback

log = logging.getLogger(__name__)
EXAMPLES = 10


class Augmentation(Callback):
    name = "augmentation"

    def __init__(self, streams: dict[str, AugmentedStream]):
        self.streams = streams
        self.examples = {task: s.examples(EXAMPLES) for task, s in streams.items()}
        for task, stream in streams.items():
            log.info(
                "%s: augmented (%s): %d rows an epoch, %d of them copies; for example:",
                task,
                stream.augmenter.config.summary(),
                len(stream),
                len(stream) - len(stream.data),
            )
            for original, augmented in self.examples[task]:
                log.info("  %s\n    -> %s", " | ".join(original), " | ".join(augmented))

    def on_evaluate(self, trainer, record: dict) -> None:
        seen = {task: s.augmented_seen for task, s in self.streams.items()}
        record["augmented_rows"] = seen
        log.info("augmented rows seen so far: %s", ", ".join(f"{t} {n}" for t, n in seen.items()))
        write_atomic(trainer.run_dir.augment, json.dumps(self.summary(seen), indent=1) + "\n")

    def summary(self, seen: dict[str, int]) -> dict:
        return {
            task: {
                "settings": stream.augmenter.config.summary(),
                "rows_per_epoch": len(stream),
                "original_rows": len(stream.data),
                "augmented_rows_seen": seen[task],
                "examples": [
                    {"original": list(o), "augmented": list(a)} for o, a in self.examples[task]
                ],
            }
            for task, stream in self.streams.items()
        }
