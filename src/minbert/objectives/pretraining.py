"""The ``[pretrain]`` table: the objectives that read text (MLM, SimCSE), and what a run
without tasks (``minbert pretrain``) scores after each epoch.

With no ``train.tasks``, the switched-on objectives (``weight`` > 0) are what the schedule
plans; beside tasks they are auxiliary: each joins its ``share`` of the task steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from minbert.objectives.base import PretrainObjective
from minbert.objectives.mlm import MLMConfig, MLMObjective
from minbert.objectives.simcse import SimCSEConfig, SimCSEObjective, ZeroShotSTS
from minbert.settings import ConfigError, setting

PRETRAINING: dict[str, type[PretrainObjective]] = {"mlm": MLMObjective, "simcse": SimCSEObjective}


@dataclass(frozen=True)
class PretrainConfig:
    mlm: MLMConfig = field(
        default_factory=MLMConfig, metadata={"doc": "masked language modelling (objectives/mlm.py)"}
    )
    simcse: SimCSEConfig = field(
        default_factory=SimCSEConfig,
        metadata={"doc": "SimCSE contrastive learning (objectives/simcse.py)"},
    )
    head_warmup_steps: int = setting(
        0,
        "the first N optimiser steps an objective takes part in train only its own head "
        "(the MLM transform, SimCSE's MLP), the encoder frozen for that objective: MiniLM "
        "ships no MLM head",
        min=0,
    )
    zero_shot_pooling: Literal["auto", "mean", "cls"] = setting(
        "auto",
        "pooling of the zero-shot STS dev score of a run without tasks: mean or cls "
        "(auto: SimCSE's pooling when SimCSE is on, else mean)",
    )

    def enabled(self) -> list[str]:
        """The switched-on objectives, in a fixed order."""
        return [name for name in PRETRAINING if getattr(self, name).weight > 0]

    def check(self, has_tasks: bool) -> None:
        for name in self.enabled():
            getattr(self, name).check(f"pretrain.{name}")
        if self.head_warmup_steps:
            heads = [n for n in self.enabled() if n == "mlm" or self.simcse.pooling == "cls"]
            if not heads:
                raise ConfigError(
                    "pretrain.head_warmup_steps: no objective with a head of its own is on "
                    "(mlm, or simcse with pooling = 'cls')"
                )
        if not has_tasks and not self.enabled():
            raise ConfigError(
                "train.tasks is empty and no pre-training objective is on: set "
                "pretrain.mlm.weight or pretrain.simcse.weight above 0, or name train.tasks"
            )
        if has_tasks:
            for name in self.enabled():
                if getattr(self, name).share == 0:
                    raise ConfigError(f"pretrain.{name}.share: 0 takes no step; set weight = 0")

    def metrics(self, has_tasks: bool) -> list[str]:
        """The dev metrics these objectives add (higher is better: train.select_by may name
        them)."""
        names = ["mlm_accuracy"] if "mlm" in self.enabled() else []
        if not has_tasks:
            names += ["sts_zeroshot_spearman", "sts_zeroshot_pearson"]
        return names

    def pooling(self) -> str:
        if self.zero_shot_pooling != "auto":
            return self.zero_shot_pooling
        return self.simcse.pooling if "simcse" in self.enabled() else "mean"


def objective_heads(config, encoder: nn.Module) -> dict[str, nn.Module]:
    """The heads of the switched-on objectives (``MultiTaskModel.objective_heads``)."""
    heads = {}
    for name in config.pretrain.enabled():
        head = PRETRAINING[name].build_head(getattr(config.pretrain, name), encoder)
        if head is not None:
            heads[name] = head
    return heads


def build_pretraining(config, tokenizer, precision) -> tuple[dict[str, PretrainObjective], list]:
    """The switched-on objectives (each with its text read and its stream made) and the
    evaluators of a run without tasks."""
    p = config.pretrain
    objectives = {
        name: PRETRAINING[name](config, getattr(p, name), precision, tokenizer, p.head_warmup_steps)
        for name in p.enabled()
    }
    evaluators = []
    if objectives and not config.train.tasks:
        evaluators.append(
            ZeroShotSTS(config.data.dir, tokenizer, p.pooling(), config.train.eval_batch_size)
        )
    return objectives, evaluators
