"""Typed configuration: frozen dataclasses, loaded from TOML with dotted overrides.

``load_config("configs/default.toml", ["train.lr=3e-5"])`` starts from the defaults below,
merges the file, then each override. Unknown keys, wrong types and out-of-range values raise
``ConfigError`` naming the key and what is allowed. Choices are ``Literal`` types; numeric
bounds live in field metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tomli_w

from minbert.config_renames import move_renamed_keys
from minbert.data.augment import AugmentConfig
from minbert.data.tasks import TASKS
from minbert.model.adapters import AdapterConfig
from minbert.model.heads import HeadSpec
from minbert.objectives.pretraining import PretrainConfig
from minbert.objectives.smart import SmartConfig
from minbert.objectives.task import TaskObjectiveConfig, check_task_objective
from minbert.settings import (  # noqa: F401  (describe, parse_override: public here)
    ConfigError,
    build_table,
    deep_copy,
    describe,
    parse_override,
    set_path,
)
from minbert.settings import setting as _field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _field("minilm-l6", "registered model name or local HF BERT directory")
    attention: Literal["sdpa", "manual"] = _field("sdpa", "attention implementation")
    mode: Literal["finetune", "frozen"] = _field(
        "finetune",
        "shorthand for train.trainable: finetune trains what train.trainable says (default "
        "everything); frozen trains only the task heads (train.trainable = ['heads.*'])",
    )
    hidden_dropout: float = _field(
        -1.0,
        "dropout on the encoder's embeddings and layer outputs (-1: the pretrained "
        "config.json's hidden_dropout_prob, 0.1 for MiniLM)",
        min=-1.0,
        max=0.9,
    )
    attention_dropout: float = _field(
        -1.0,
        "dropout on the attention probabilities (-1: the pretrained config.json's "
        "attention_probs_dropout_prob, 0.1 for MiniLM)",
        min=-1.0,
        max=0.9,
    )


@dataclass(frozen=True)
class HeadConfig:
    """How one task reads the encoder. Pair options are ignored by single-sentence tasks."""

    @staticmethod
    def default_for(task: str) -> HeadConfig:
        return default_head(task) if task in TASKS else HeadConfig()

    pooling: Literal["cls", "pooler", "mean", "max", "mean+max"] = _field(
        "cls", "how token states become one vector"
    )
    kind: Literal["linear", "mlp", "cosine"] = _field(
        "linear", "classifier on the features; cosine only for bi-encoded pair tasks"
    )
    hidden: list[int] = _field([256], "hidden sizes of an mlp head")
    activation: Literal["gelu", "relu", "tanh"] = _field("gelu", "activation of an mlp head")
    dropout: float = _field(0.1, "dropout before each head layer", min=0.0, max=0.9)
    encoding: Literal["cross", "bi"] = _field(
        "cross", "pair tasks: one sequence [CLS] a [SEP] b [SEP], or each sentence alone"
    )
    features: Literal["uv", "uvd", "uvdp", "uvdpc"] = _field(
        "uvdp",
        "bi-encoder features: [u;v], [u;v;|u-v|], [u;v;|u-v|;u*v], and uvdpc adds cos(u,v)",
    )
    normalise: bool = _field(True, "regression tasks: train on labels mapped to [0, 1]")
    swap: bool = _field(
        False, "bi-encoded pair tasks: train on (a, b) or (b, a) at random (symmetric relations)"
    )
    calibrate: float = _field(
        0.0,
        "binary tasks: hold out this fraction of the training rows (never trained on) and "
        "after each epoch set the decision threshold to the one most accurate on them "
        "(0: the threshold stays at p = 0.5)",
        min=0.0,
        max=0.5,
    )
    own_layers: int = _field(
        0,
        "this task reads its own copy of the encoder's top N layers (starting from the "
        "pretrained ones, trained by this task alone, at the encoder's learning rate) in place "
        "of the shared ones (0: every layer shared)",
        min=0,
    )


@dataclass(frozen=True)
class DataConfig:
    dir: str = _field("data", "folder holding the task files")
    max_length: int = _field(128, "tokens per sequence (pairs: both sentences)", min=8, max=512)
    train_limit: int = _field(0, "use only the first N training rows of each task (0: all)", min=0)
    dev_limit: int = _field(0, "use only the first N dev rows of each task (0: all)", min=0)
    train_fraction: float = _field(
        1.0,
        "train on a random share of each task's training rows, drawn with train.seed (so "
        "runs paired by seed share their rows; the low-data regime); 1: all",
        min=0.0,
        max=1.0,
    )
    wordnet_dir: str = _field(
        "nltk_data",
        "WordNet 3.0 for augment.*.synonym and insert: an NLTK data folder holding "
        "corpora/wordnet (make setup links ../shared/data/nltk_data here)",
    )
    on_bad_row: Literal["error", "skip"] = _field(
        "error", "a malformed row stops the run, or is skipped and counted"
    )
    ptb_text: bool = _field(
        False,
        "undo Penn Treebank tokenisation before WordPiece (-LRB- -> (, `` '' -> \", "
        "does n't -> doesn't), as SST and CFIMDB are written; no-op on plain text",
    )


@dataclass(frozen=True)
class GradNormConfig:
    """GradNorm (Chen et al. 2018): task weights learned so that gradient norms follow training rates."""

    alpha: float = _field(
        1.5, "asymmetry: how strongly slower-training tasks are pulled up (0: equal norms)", min=0.0
    )
    lr: float = _field(0.025, "learning rate of the task weights (their own AdamW)", min=0.0)
    layer: str = _field(
        "",
        "parameter-name prefix of the shared layer whose gradient norms are balanced, e.g. "
        "'encoder.encoder.layer.5' or 'encoder.embeddings' ('': the last encoder layer)",
    )


@dataclass(frozen=True)
class UncertaintyConfig:
    """Uncertainty weighting (Kendall et al. 2018): one learned log-variance per task."""

    lr: float = _field(0.01, "learning rate of the log-variances (their own AdamW)", min=0.0)


@dataclass(frozen=True)
class TrainConfig:
    tasks: list[str] = _field(
        ["sst"], "tasks trained together (none: a pre-training run, minbert pretrain)"
    )
    epochs: int = _field(3, "passes of the task schedule", min=1)
    max_steps: int = _field(0, "stop after this many optimiser steps (0: no limit)", min=0)
    batch_size: int = _field(32, "examples per task batch", min=1)
    eval_batch_size: int = _field(128, "examples per evaluation batch", min=1)
    lr: float = _field(5e-5, "peak learning rate", min=0.0)
    head_lr: float = _field(0.0, "peak learning rate of the task heads (0: same as lr)", min=0.0)
    layer_lr_decay: float = _field(
        1.0,
        "layer-wise LR decay: the top encoder layer trains at lr, each layer below at this "
        "factor times the one above, the embeddings one factor lower still; the pooler "
        "and heads are not decayed (1: every encoder layer at lr)",
        min=0.1,
        max=1.0,
    )
    weight_decay: float = _field(0.01, "decoupled weight decay (not on biases, LayerNorm)", min=0.0)
    betas: list[float] = _field([0.9, 0.999], "AdamW betas")
    eps: float = _field(1e-8, "AdamW epsilon", min=0.0)
    warmup_ratio: float = _field(0.1, "fraction of steps with linear warm-up", min=0.0, max=1.0)
    lr_schedule: Literal["linear", "cosine", "constant"] = _field("linear", "decay after warm-up")
    seed: int = _field(11711, "seed of every random generator", min=0)
    schedule: Literal["sequential", "round_robin", "interleaved"] = _field(
        "sequential", "which task batches make each optimiser step"
    )
    sampling: Literal["proportional", "sqrt", "equal", "annealed"] = _field(
        "proportional", "task mixture of round_robin and interleaved schedules"
    )
    steps_per_epoch: int = _field(0, "optimiser steps per epoch (0: one pass of the data)", min=0)
    strategy: Literal["sum", "weighted", "pcgrad", "gradnorm", "uncertainty"] = _field(
        "sum", "how per-task losses become gradients"
    )
    task_weights: dict[str, float] = _field({}, "per-task loss weights of the weighted strategy")
    gradnorm: GradNormConfig = field(
        default_factory=GradNormConfig, metadata={"doc": "settings of the gradnorm strategy"}
    )
    uncertainty: UncertaintyConfig = field(
        default_factory=UncertaintyConfig, metadata={"doc": "settings of the uncertainty strategy"}
    )
    smart: SmartConfig = field(
        default_factory=SmartConfig, metadata={"doc": "SMART regularisation"}
    )
    log_conflicts_every: int = _field(
        0,
        "every N steps, log the cosine and norms of the task gradients on the shared "
        "parameters (0: off)",
        min=0,
    )
    ema_decay: float = _field(
        0.0,
        "keep an exponential moving average of the weights, updated after every step with "
        "this decay, and evaluate and save the average (0: off)",
        min=0.0,
        max=0.9999,
    )
    max_grad_norm: float = _field(1.0, "clip the global gradient norm (0: off)", min=0.0)
    accumulate_steps: int = _field(
        1,
        "micro-batches per optimiser step: each task batch of batch_size * accumulate_steps "
        "rows is split into this many, their gradients summed (sum and weighted strategies)",
        min=1,
    )
    trainable: list[str] = _field(
        ["*"],
        "glob patterns over parameter names (e.g. 'heads.*', 'encoder.encoder.layer.5.*'): "
        "the parameters that train; every other one is frozen",
    )
    select_by: str = _field(
        "overall_leaderboard",
        "the dev metric that picks the saved best epoch: overall_leaderboard, overall_mean "
        "or <task>_<metric> of a trained task (higher is better)",
    )
    on_nonfinite: Literal["error", "skip"] = _field(
        "error", "a NaN/inf loss or gradient stops the run, or its step is skipped and counted"
    )
    checkpoint_every: int = _field(
        200,
        "save the resumable state (RUN/last/) every N steps and after each epoch (0: "
        "only after each epoch)",
        min=0,
    )
    precision: Literal["auto", "fp32", "bf16"] = _field(
        "auto", "auto: bf16 autocast where the hardware has fast bf16, else fp32"
    )
    device: Literal["auto", "cpu", "cuda"] = _field("auto", "auto: cuda when available")
    threads: int = _field(
        0, "CPU threads for torch, per rank under torchrun (0: torch's default)", min=0
    )
    dist_timeout: float = _field(
        1800.0,
        "under torchrun: seconds a rank waits for the others at a collective (rank 0's "
        "evaluation included) before it stops with an error instead of hanging",
        min=1.0,
    )
    length_grouping: bool = _field(True, "batch similar lengths together (less padding)")
    compile_optimizer: bool = _field(
        True,
        "on the CPU, fuse each AdamW update into one torch.compile'd kernel (compiled once "
        "per process, seconds; falls back to the eager update if compiling fails)",
    )
    progress: bool = _field(True, "show progress bars")


ACCUMULATING_STRATEGIES = ("sum", "weighted")  # linear in the losses: micro-batches add up


def selectable_metrics(tasks: list[str]) -> list[str]:
    """Dev metrics ``train.select_by`` may name for these tasks."""
    return ["overall_leaderboard", "overall_mean", *(f"{t}_{TASKS[t].metric}" for t in tasks)]


def default_head(task: str) -> HeadConfig:
    """The head a task gets when the config does not say otherwise (from its TaskSpec)."""
    return HeadConfig(**TASKS[task].default_head)


def _default_heads() -> dict[str, HeadConfig]:
    return {name: default_head(name) for name in TASKS}


TASK_TABLES = ("heads", "objectives", "augment")
ADAPTER_KINDS = (
    "lora",
    "molora",
    "pals",
)  # the [adapter] sub-tables, one per kind  # tables with one sub-table per task


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heads: dict[str, HeadConfig] = field(default_factory=_default_heads)
    objectives: dict[str, TaskObjectiveConfig] = field(
        default_factory=lambda: {name: TaskObjectiveConfig() for name in TASKS}
    )
    augment: dict[str, AugmentConfig] = field(
        default_factory=lambda: {name: AugmentConfig() for name in TASKS}
    )
    pretrain: PretrainConfig = field(
        default_factory=PretrainConfig,
        metadata={"doc": "pre-training objectives (MLM, SimCSE): alone, or beside the tasks"},
    )
    adapter: AdapterConfig = field(
        default_factory=AdapterConfig,
        metadata={"doc": "an adapter on the encoder (LoRA, LoRA experts, PALs): model/adapters/"},
    )

    def __post_init__(self) -> None:
        known = sorted(TASKS)
        for task in self.train.tasks:
            if task not in TASKS:
                raise ConfigError(f"train.tasks: unknown task {task!r}; known: {known}")
        self.pretrain.check(bool(self.train.tasks))
        self.adapter.check(self.train.tasks)
        if self.adapter.on and self.model.mode == "frozen":
            raise ConfigError(
                "model.mode: 'frozen' trains the heads alone; an adapter trains its own "
                "parameters (adapter.kind), so leave model.mode = 'finetune'"
            )
        if len(set(self.train.tasks)) != len(self.train.tasks):
            raise ConfigError(f"train.tasks: repeated task in {self.train.tasks}")
        for table in TASK_TABLES:
            for task in getattr(self, table):
                if task not in TASKS:
                    raise ConfigError(f"{table}.{task}: unknown task; known: {known}")
        for key in ("hidden_dropout", "attention_dropout"):
            value = getattr(self.model, key)
            if value != -1 and value < 0:
                raise ConfigError(f"model.{key}: -1 (the pretrained value) or in [0, 0.9]")
        train = self.train
        for task in train.task_weights:
            if task not in train.tasks:
                raise ConfigError(
                    f"train.task_weights.{task}: not one of train.tasks {train.tasks}"
                )
        if train.log_conflicts_every and len(train.tasks) < 2:
            raise ConfigError("train.log_conflicts_every: needs two or more train.tasks")
        if train.log_conflicts_every and self.model.mode == "frozen":
            raise ConfigError(
                "train.log_conflicts_every: a frozen encoder has no shared gradients to compare"
            )
        train.smart.check()
        if (
            train.tasks
            and self.pretrain.enabled()
            and train.strategy in ("gradnorm", "uncertainty")
        ):
            raise ConfigError(
                f"train.strategy: {train.strategy} weighs train.tasks alone; beside "
                f"pretrain.{self.pretrain.enabled()[0]}, use sum, weighted or pcgrad"
            )
        if len(train.betas) != 2 or not all(0 <= b < 1 for b in train.betas):
            raise ConfigError(f"train.betas: two values in [0, 1), got {train.betas}")
        if train.accumulate_steps > 1 and train.strategy not in ACCUMULATING_STRATEGIES:
            raise ConfigError(
                f"train.accumulate_steps: the {train.strategy} strategy needs a whole step's "
                f"losses at once; use one of {list(ACCUMULATING_STRATEGIES)} or accumulate_steps = 1"
            )
        if not train.trainable:
            raise ConfigError("train.trainable: name at least one pattern (e.g. '*')")
        allowed = selectable_metrics(train.tasks) if train.tasks else []
        allowed += self.pretrain.metrics(bool(train.tasks))
        if train.select_by not in allowed:
            raise ConfigError(
                f"train.select_by: {train.select_by!r} is not allowed; choose one of {allowed}"
            )
        for task in TASKS:
            head, spec = self.head(task), TASKS[task]
            if head.kind == "cosine" and not (spec.is_pair and head.encoding == "bi"):
                raise ConfigError(
                    f"heads.{task}.kind: 'cosine' needs a bi-encoded pair task "
                    f"(set heads.{task}.encoding = 'bi')"
                )
            if head.calibrate and spec.label_kind != "binary":
                raise ConfigError(
                    f"heads.{task}.calibrate: only binary tasks have a decision threshold"
                )
            if head.swap and not (spec.is_pair and head.encoding == "bi"):
                raise ConfigError(
                    f"heads.{task}.swap: needs a bi-encoded pair task "
                    f"(set heads.{task}.encoding = 'bi')"
                )
            if any(h < 1 for h in head.hidden):
                raise ConfigError(f"heads.{task}.hidden: sizes must be >= 1, got {head.hidden}")
            check_task_objective(self.objective(task), spec, head, self)
            self.augmentation(task).check(spec)
        if self.data.train_fraction == 0:
            raise ConfigError("data.train_fraction: must be more than 0 (1: every row)")

    def head(self, task: str) -> HeadConfig:
        return self.heads.get(task) or default_head(task)

    def objective(self, task: str) -> TaskObjectiveConfig:
        return self.objectives.get(task) or TaskObjectiveConfig()

    def augmentation(self, task: str) -> AugmentConfig:
        return self.augment.get(task) or AugmentConfig()

    def head_specs(self, tasks: list[str] | None = None) -> dict[str, HeadSpec]:
        """What the model needs of each task's head (``train.tasks`` unless ``tasks``)."""
        derived = {"normalise", "threshold"}  # not read as they are from heads.<task>
        shared = [f.name for f in dataclasses.fields(HeadSpec) if f.name not in derived]
        specs = {}
        for task in tasks or self.train.tasks:
            h = self.head(task)
            specs[task] = HeadSpec(
                **{name: copy.copy(getattr(h, name)) for name in shared},
                normalise=h.normalise or h.kind == "cosine",
                threshold=bool(h.calibrate),
            )
        return specs

    def trainable_patterns(self) -> list[str]:
        """``train.trainable``, or the heads alone for ``model.mode = "frozen"``."""
        return ["heads.*"] if self.model.mode == "frozen" else list(self.train.trainable)

    def bi_encoded(self, task: str) -> bool:
        """True when ``task`` is a pair task whose sentences are encoded one at a time."""
        return TASKS[task].is_pair and self.head(task).encoding == "bi"

    def to_dict(self) -> dict:
        """Every setting, with the task tables of the trained tasks only (and the pretrain
        table only when it switches an objective on, the adapter table only with an adapter)."""
        data = dataclasses.asdict(self)
        for table in TASK_TABLES:
            data[table] = {t: v for t, v in data[table].items() if t in self.train.tasks}
        if not self.pretrain.enabled():
            del data["pretrain"]
        if not self.adapter.on:
            del data["adapter"]
        else:  # the chosen kind's table alone
            for kind in ADAPTER_KINDS:
                if kind != self.adapter.kind:
                    del data["adapter"][kind]
        return data

    def unused_task_tables(self) -> list[str]:
        """``heads.<task>`` / ``objectives.<task>`` / ``augment.<task>`` tables that set something for a task the
        run does not train (a typo of ``sst`` as ``sts``, or a task dropped from
        ``train.tasks``)."""
        defaults = {
            "heads": default_head,
            "objectives": lambda task: TaskObjectiveConfig(),
            "augment": lambda task: AugmentConfig(),
        }
        return [
            f"{table}.{task}"
            for table in TASK_TABLES
            for task, value in getattr(self, table).items()
            if task not in self.train.tasks and value != defaults[table](task)
        ]

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def merge_tables(under: dict, over: dict) -> dict:
    """``over``'s keys on top of ``under``'s, table by table."""
    out = deep_copy(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(
    data: dict, overrides: list[str] | tuple[str, ...] = (), warn_unused: bool = True
) -> Config:
    data = deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        set_path(data, path, value, text)
    move_renamed_keys(data)
    config = build_table(Config, data)
    if warn_unused and (unused := config.unused_task_tables()):
        log.warning(
            "%s: not used, the run trains only %s (train.tasks)",
            ", ".join(unused),
            config.train.tasks,
        )
    return config


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's tables; with a top-level ``extends = "other.toml"`` (relative to this
    file), the other file's tables first and this file's on top."""
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}" + (f" (extended by {seen[-1]})" if seen else "")
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is no error
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: the path of a config file, got {parent!r}")
    parent_path = path.parent / parent
    if parent_path.resolve() in [p.resolve() for p in (*seen, path)]:
        raise ConfigError(f"{path}: extends {parent}, which extends it again (a cycle)")
    return merge_tables(read_config_file(parent_path, (*seen, path)), data)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
    warn_unused: bool = True,
) -> Config:
    """Defaults, then ``base`` (a command's own defaults), then the TOML file (if any), then
    ``key=value`` overrides. ``warn_unused``: log task tables the run does not train (off
    where a config is only checked, e.g. every arm of a sweep spec)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_config_file(path)
    if base:
        data = merge_tables(base, data)
    try:
        return config_from_dict(data, overrides, warn_unused)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
