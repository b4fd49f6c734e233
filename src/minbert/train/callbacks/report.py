"""The report: ``RUN/report/`` (summary, curves, error analysis), written at the end."""

from __future__ import annotations

import logging

from minbert.eval.report import write_report
from minbert.train.callbacks.base import Callback

log = logging.getLogger(__name__)


class Report(Callback):
    name = "report"

    def on_train_end(self, trainer, summary: dict) -> None:
        write_report(trainer.run_dir.root)
        log.info("report: %s", trainer.run_dir.summary)
