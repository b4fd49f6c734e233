"""Best-checkpoint choice: after each epoch, the model scoring highest on ``train.select_by``
(a dev metric; the leaderboard overall score by default) is saved to ``RUN/best/``."""

from __future__ import annotations

from minbert.run.model_dir import save_model_dir
from minbert.train.callbacks.base import Callback


class SelectBest(Callback):
    name = "select_best"

    def __init__(self, metric: str):
        self.metric = metric

    def on_epoch_end(self, trainer, record: dict) -> None:
        st = trainer.state
        value = record["dev"][self.metric]
        if value > st.best_score:
            st.best_score, st.best_epoch = value, record["epoch"]
            with trainer.callbacks.evaluated_weights():
                trainer.check_finite_weights()
                save_model_dir(
                    trainer.model,
                    trainer.tokenizer,
                    trainer.config,
                    trainer.run_dir.best,
                    {"epoch": record["epoch"], "step": record["step"], "dev": record["dev"]},
                )
