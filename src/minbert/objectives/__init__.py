"""Training objectives: what a step's losses are made of.

``build_objectives`` makes one ``TaskObjective`` per trained task (its head loss and the
terms its ``[objectives.<task>]`` table switches on; SMART, from ``train.smart``, is shared by
all tasks: one momentum teacher), and the pre-training objectives ``[pretrain]`` switches on
(objectives/pretraining.py). An ``ObjectiveSet`` is what the trainer holds: objectives by
name, which of them the schedule plans and which join a share of its steps, the streams the
objectives bring, their dev metrics, and the stateful parts to step, save and restore.
"""

from __future__ import annotations

from torch import nn

from minbert.data.batching import TaskStream
from minbert.data.tasks import TASKS
from minbert.objectives.base import Loss, Objective, Precision, PretrainObjective, Term
from minbert.objectives.pretraining import build_pretraining, objective_heads
from minbert.objectives.smart import Smart, SmartTerm
from minbert.objectives.task import TaskObjective, TaskObjectiveConfig, task_loss


class ObjectiveSet(dict[str, Objective]):
    def __init__(self, objectives: dict[str, Objective], smart: Smart | None = None, evaluators=()):
        super().__init__(objectives)
        self.smart = smart
        self.evaluators = list(evaluators)  # dev metrics of no objective alone (zero-shot STS)

    @property
    def pretraining(self) -> dict[str, PretrainObjective]:
        return {n: o for n, o in self.items() if isinstance(o, PretrainObjective)}

    @property
    def scheduled(self) -> list[str]:
        """What the schedule plans: the tasks, or without tasks the pre-training objectives."""
        tasks = [n for n, o in self.items() if not isinstance(o, PretrainObjective)]
        return tasks or list(self.pretraining)

    def planned_sizes(self, streams: dict[str, TaskStream]) -> dict[str, int]:
        """Rows in one pass of each scheduled objective's stream (what the schedule plans)."""
        return {name: len(streams[self[name].source]) for name in self.scheduled}

    @property
    def auxiliary(self) -> dict[str, float]:
        """Pre-training objectives beside tasks, each with its share of the steps."""
        planned = set(self.scheduled)
        return {n: o.config.share for n, o in self.pretraining.items() if n not in planned}

    def streams(self) -> dict[str, TaskStream]:
        """The streams the pre-training objectives read (the tasks' come from the data)."""
        return {o.source: o.stream for o in self.pretraining.values()}

    def dev_metrics(self, model: nn.Module, device, bf16: bool) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for part in (*self.values(), *self.evaluators):
            metrics |= part.dev_metrics(model, device, bf16)
        return metrics

    def after_step(self, model: nn.Module) -> None:
        if self.smart is not None:
            self.smart.after_step(model)
        for objective in self.values():
            objective.after_step(model)

    def state_dict(self) -> dict:
        own = {n: o.state_dict() for n, o in self.items() if o.state_dict()}
        return {"smart": self.smart.state_dict() if self.smart else {}, **own}

    def load_state_dict(self, state: dict) -> None:
        if self.smart is not None:
            self.smart.load_state_dict(state.get("smart", {}))
        for name, objective in self.items():
            objective.load_state_dict(state.get(name, {}))


def build_objectives(config, model: nn.Module, precision: Precision, tokenizer) -> ObjectiveSet:
    smart = Smart(config.train.smart, model) if config.train.smart.enabled else None
    extra = [SmartTerm(smart)] if smart is not None else []
    if model.adapter is not None:
        extra += model.adapter.terms()  # the router's balance loss
    objectives: dict[str, Objective] = {
        task: TaskObjective(TASKS[task], config.objective(task), precision, list(extra))
        for task in config.train.tasks
    }
    pretraining, evaluators = build_pretraining(config, tokenizer, precision)
    return ObjectiveSet(objectives | pretraining, smart, evaluators)


__all__ = [
    "Loss",
    "Objective",
    "ObjectiveSet",
    "Precision",
    "PretrainObjective",
    "Term",
    "TaskObjective",
    "TaskObjectiveConfig",
    "build_objectives",
    "objective_heads",
    "task_loss",
]
