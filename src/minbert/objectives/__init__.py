"""Training objectives: what a step's losses are made of.

``build_objectives`` makes one ``TaskObjective`` per trained task (its head loss and the
terms its ``[objectives.<task>]`` table switches on; SMART, from ``train.smart``, is shared by
all tasks: one momentum teacher). An ``ObjectiveSet`` is what the trainer holds: objectives by
name, and the stateful parts to step, save and restore once each.
"""

from __future__ import annotations

from torch import nn

from minbert.data.tasks import TASKS
from minbert.objectives.base import Loss, Objective, Precision, Term
from minbert.objectives.smart import Smart, SmartTerm
from minbert.objectives.task import TaskObjective, TaskObjectiveConfig, task_loss


class ObjectiveSet(dict[str, Objective]):
    def __init__(self, objectives: dict[str, Objective], smart: Smart | None = None):
        super().__init__(objectives)
        self.smart = smart

    def after_step(self, model: nn.Module) -> None:
        if self.smart is not None:
            self.smart.after_step(model)

    def state_dict(self) -> dict:
        return {"smart": self.smart.state_dict() if self.smart else {}}

    def load_state_dict(self, state: dict) -> None:
        if self.smart is not None:
            self.smart.load_state_dict(state.get("smart", {}))


def build_objectives(config, model: nn.Module, precision: Precision) -> ObjectiveSet:
    smart = Smart(config.train.smart, model) if config.train.smart.enabled else None
    objectives = {
        task: TaskObjective(
            TASKS[task],
            config.objective(task),
            precision,
            [SmartTerm(smart)] if smart is not None else [],
        )
        for task in config.train.tasks
    }
    return ObjectiveSet(objectives, smart)


__all__ = [
    "Loss",
    "Objective",
    "ObjectiveSet",
    "Precision",
    "Term",
    "TaskObjective",
    "TaskObjectiveConfig",
    "build_objectives",
    "task_loss",
]
