"""The task objective: a task's head loss (CE / BCE / MSE, label smoothing, ordinal targets)
plus the extra terms its table switches on (``registry.TERMS``; SMART from ``train.smart``)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.data.batching import Batch
from minbert.data.tasks import TaskSpec
from minbert.objectives.base import Loss, Objective, Precision, Term
from minbert.objectives.registry import TERMS
from minbert.settings import ConfigError, setting


def task_loss(
    spec: TaskSpec,
    outputs: Tensor,
    targets: Tensor,
    label_smoothing: float = 0.0,
    ordinal_width: float = 0.0,
) -> Tensor:
    """Cross-entropy for classes (``label_smoothing`` of the target's mass spread evenly over
    the classes, Szegedy et al. 2016; soft ordinal targets when ``ordinal_width`` > 0), BCE
    with logits for binary labels, MSE for scores."""
    # at least fp32 even under bf16 autocast; float64 stays float64 (exactness tests)
    outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
    if spec.label_kind == "class":
        target = targets.long()
        if ordinal_width:
            target = ordinal_targets(target, spec.num_classes, ordinal_width).to(outputs.dtype)
        return F.cross_entropy(outputs, target, label_smoothing=label_smoothing)
    if spec.label_kind == "binary":
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))
    return F.mse_loss(outputs, targets.to(outputs.dtype))


def ordinal_targets(targets: Tensor, num_classes: int, width: float) -> Tensor:
    """Soft labels for ordered classes (SORD, Diaz & Marathe 2019): ``q_c`` proportional to
    ``exp(-(c - y)^2 / width)``. Calling "negative" "very negative" is a smaller error than
    calling it "positive", and one-hot targets say they are equally wrong."""
    classes = torch.arange(num_classes, device=targets.device, dtype=torch.float32)
    distance = (classes[None, :] - targets.float()[:, None]) ** 2  # (B, classes)
    return torch.softmax(-distance / width, dim=-1)


def _term_field(cls: type[Term]) -> tuple:
    doc = (cls.__module__.rsplit(".", 1)[-1], (cls.__doc__ or cls.name).strip())
    meta = {"doc": f"the {doc[0]} term (objectives/{doc[0]}.py)"}
    return cls.name, cls.Config, dataclasses.field(default_factory=cls.Config, metadata=meta)


TaskObjectiveConfig = dataclasses.make_dataclass(
    "TaskObjectiveConfig",
    [
        (
            "label_smoothing",
            float,
            setting(
                0.0,
                "class tasks: cross-entropy against targets that give this share of the mass "
                "to all classes evenly (0: one-hot targets)",
                min=0.0,
                max=0.5,
            ),
        ),
        (
            "ordinal_width",
            float,
            setting(
                0.0,
                "class tasks with ordered classes: cross-entropy against soft targets "
                "q_c proportional to exp(-(c - y)^2 / width), mass on the classes near the "
                "gold one (SORD, Diaz & Marathe 2019; 0: one-hot targets)",
                min=0.0,
            ),
        ),
        *(_term_field(cls) for cls in TERMS.values()),
    ],
    frozen=True,
)
TaskObjectiveConfig.__module__ = __name__
TaskObjectiveConfig.__doc__ = "How one task's loss is made: ``[objectives.<task>]``."


def check_task_objective(config, spec: TaskSpec, head, full) -> None:
    """Each setting of ``objectives.<task>`` validated against the task and the run."""
    key = f"objectives.{spec.name}"
    if config.label_smoothing and spec.label_kind != "class":
        raise ConfigError(f"{key}.label_smoothing: only multi-class tasks are smoothed")
    if config.ordinal_width and spec.label_kind != "class":
        raise ConfigError(f"{key}.ordinal_width: only multi-class tasks have ordered classes")
    for name, cls in TERMS.items():
        if cls.active(getattr(config, name)):
            cls.check(getattr(config, name), f"{key}.{name}", spec, head, full)


class TaskObjective(Objective):
    """The loss of one task's head on a batch of its training rows."""

    def __init__(
        self, spec: TaskSpec, config, precision: Precision, extra: list[Term] | None = None
    ):
        self.name = self.source = spec.name
        self.spec = spec
        self.config = config
        self.precision = precision
        terms = [cls(getattr(config, n), spec.label_kind) for n, cls in TERMS.items()]
        terms = [t for t in terms if type(t).active(getattr(config, t.name))]
        terms += extra or []
        owners = [t for t in terms if t.owns_forward]
        if len(owners) > 1:
            names = ", ".join(t.name for t in owners)
            raise ConfigError(f"objectives.{spec.name}: {names} each need their own forward")
        self.forward_term = owners[0] if owners else None
        self.terms = [t for t in terms if not t.owns_forward]

    def prepare(self, batch: Batch) -> Batch:
        for term in (self.forward_term, *self.terms):
            if term is not None:
                batch = term.prepare(batch)
        return batch

    def _head_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        cfg = self.config
        return task_loss(self.spec, outputs, targets, cfg.label_smoothing, cfg.ordinal_width)

    def plain_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The head loss alone, no extra terms (the conflict probes measure this)."""
        with self.precision():
            outputs = model(self.name, batch)
        return self._head_loss(outputs, model.training_targets(self.name, batch.labels))

    def loss(self, model: nn.Module, batch: Batch) -> Loss:
        with self.precision():
            if self.forward_term is None:
                outputs, extra = model(self.name, batch), None
            else:
                outputs, extra = self.forward_term.forward(model, self.name, batch)
        targets = model.training_targets(self.name, batch.labels)
        loss = self._head_loss(outputs, targets)  # R-Drop: both passes' mean
        total, parts = loss, {"loss": loss}
        if extra is not None:
            total = total + extra
            parts[self.forward_term.name] = extra
        for term in self.terms:
            value = term.value(outputs, targets)
            total = total + value
            parts[term.name] = value
        return Loss(total, parts)
