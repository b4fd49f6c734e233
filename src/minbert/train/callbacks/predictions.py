"""The final predictions: the best model reloaded, dev scored again (the objectives' own dev
metrics too), dev and test predictions of the tasks written (``RUN/predictions/``), and
``RUN/final.json``."""

from __future__ import annotations

import json

from minbert.data.io import write_predictions
from minbert.data.tasks import TASKS
from minbert.eval.evaluate import evaluate
from minbert.run.atomic import save_array, write_atomic
from minbert.run.model_dir import load_model_dir
from minbert.train.callbacks.base import Callback


class FinalPredictions(Callback):
    name = "predictions"

    def on_train_end(self, trainer, summary: dict) -> None:
        """Fills ``summary["dev"]`` with the reloaded best model's dev scores."""
        run, cfg = trainer.run_dir, trainer.config.train
        model, _, _ = load_model_dir(run.best)
        model.to(trainer.device)
        dev, dev_predictions = evaluate(
            model, trainer.dev_data, cfg.eval_batch_size, trainer.device, trainer.bf16
        )
        dev |= trainer.objectives.dev_metrics(model, trainer.device, trainer.bf16)
        test_data = trainer.test_data
        _, test_predictions = evaluate(
            model, test_data, cfg.eval_batch_size, trainer.device, trainer.bf16
        )
        for split, data, predictions in (
            ("dev", trainer.dev_data, dev_predictions),
            ("test", test_data, test_predictions),
        ):
            for task, d in data.items():
                write_predictions(
                    run.predictions(task, split),
                    d.ids,
                    predictions[task].values,
                    TASKS[task].label_kind,
                )
                if split == "dev":  # raw outputs, for the report's confidence-ranked errors
                    save_array(run.outputs(task, split), predictions[task].outputs)
        summary["dev"] = dev
        write_atomic(run.final, json.dumps(summary, indent=2) + "\n")
