"""A run's report: tables, training curves, confusion matrices, score scatters, worst errors.

``write_report(run_dir)`` reads only what a run leaves in its folder (``config.toml``,
``metrics.jsonl``, ``final.json``, ``predictions/``, all named by ``RunDir``) plus the dev files
its config names, so a report can be rebuilt at any time without the model, and on a machine
without a GPU.

A run without tasks (``minbert pretrain``) gets the same report less the per-task parts: the
columns of its tables and curves are the objectives and dev metrics its records hold.

Everything task-specific comes from the task registry (``label_kind``, ``num_classes``,
``score_range``, ``metric``): a new task gets a report without touching this package. The only
per-task entries here are optional display names for class labels.

- ``read``: reading the run folder (``ReportError``, ``read_predictions``,
  ``check_ids``, ``load_outputs``) and the pure helpers (``confusion_matrix``,
  ``bucket_errors``, ``worst_errors``, ``ordered_keys``), tested on their own;
- ``plots``: the matplotlib figures, arrays in and a PNG file out;
- ``summary``: the markdown tables, ``summary.md`` and ``write_report``.
"""

from minbert.eval.report.read import (
    ReportError,
    bucket_errors,
    confusion_matrix,
    joined_step_log,
    ordered_keys,
    score_edges,
    worst_errors,
)
from minbert.eval.report.summary import write_report

__all__ = [
    "ReportError",
    "bucket_errors",
    "confusion_matrix",
    "joined_step_log",
    "ordered_keys",
    "score_edges",
    "worst_errors",
    "write_report",
]
