"""Typed configuration: frozen dataclasses, loaded from TOML with dotted overrides.

``load_config("configs/default.toml", ["train.lr=3e-5"])`` starts from the defaults below,
merges the file, then each override. Unknown keys, wrong types and out-of-range values raise
``ConfigError`` naming the key and what is allowed. Choices are ``Literal`` types; numeric
bounds live in field metadata.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from minbert.data.tasks import TASKS


class ConfigError(ValueError):
    """A configuration key or value that is not allowed."""


def _field(default: Any, doc: str, *, min: float | None = None, max: float | None = None) -> Any:
    meta = {"doc": doc, "min": min, "max": max}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _field("minilm-l6", "registered model name or local HF BERT directory")
    attention: Literal["sdpa", "manual"] = _field("sdpa", "attention implementation")
    mode: Literal["finetune", "frozen"] = _field(
        "finetune", "finetune trains everything; frozen trains only the task heads"
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
    cosent: float = _field(
        0.0,
        "score tasks: weight of a CoSENT ranking loss on the batch, added to the MSE (0: off)",
        min=0.0,
    )
    cosent_scale: float = _field(20.0, "scale of the score differences in CoSENT", min=0.0)
    contrastive: float = _field(
        0.0,
        "bi-encoded binary pair tasks: weight of an in-batch contrastive loss on the positive "
        "pairs' embeddings (each b among the batch's sentences; 0: off)",
        min=0.0,
    )
    contrastive_scale: float = _field(
        20.0, "temperature inverse of the contrastive loss: logits are scale * cos", min=0.0
    )
    label_smoothing: float = _field(
        0.0,
        "class tasks: cross-entropy against targets that give this share of the mass to "
        "all classes evenly (0: one-hot targets)",
        min=0.0,
        max=0.5,
    )
    ordinal_width: float = _field(
        0.0,
        "class tasks with ordered classes: cross-entropy against soft targets "
        "q_c proportional to exp(-(c - y)^2 / width), mass on the classes near the gold one "
        "(SORD, Diaz & Marathe 2019; 0: one-hot targets)",
        min=0.0,
    )
    rdrop: float = _field(
        0.0,
        "R-Drop (Liang et al. 2021): each training batch goes through the model twice, with "
        "independent dropout; the loss is the mean of the two task losses plus this weight "
        "times KL(p1 || p2) + KL(p2 || p1) (squared error for score tasks; 0: off)",
        min=0.0,
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
class SmartConfig:
    """SMART (Jiang et al. 2020): adversarial smoothness on the word embeddings, optionally
    with a Bregman proximal-point term towards a momentum teacher."""

    enabled: bool = _field(False, "add the SMART regulariser to every task's loss")
    weight: float = _field(1.0, "lambda_s: weight of the smoothness term", min=0.0)
    epsilon: float = _field(
        1e-5, "radius of the L-inf ball the embedding perturbation stays in", min=0.0
    )
    step_size: float = _field(1e-3, "eta: step of each projected ascent step", min=0.0)
    steps: int = _field(1, "projected ascent steps per batch (0: random noise only)", min=0)
    noise_std: float = _field(1e-5, "sigma of the Gaussian the perturbation starts from", min=0.0)
    bregman_weight: float = _field(
        0.0, "mu: weight of the Bregman proximal-point term (0: no momentum teacher)", min=0.0
    )
    bregman_beta: float = _field(
        0.99,
        "beta: momentum of the teacher, teacher = beta teacher + (1 - beta) model",
        min=0.0,
        max=1.0,
    )


@dataclass(frozen=True)
class TrainConfig:
    tasks: list[str] = _field(["sst"], "tasks trained together")
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
    threads: int = _field(0, "CPU threads for torch (0: torch's default)", min=0)
    length_grouping: bool = _field(True, "batch similar lengths together (less padding)")
    compile_optimizer: bool = _field(
        True,
        "on the CPU, fuse each AdamW update into one torch.compile'd kernel (compiled once "
        "per process, seconds; falls back to the eager update if compiling fails)",
    )
    progress: bool = _field(True, "show progress bars")


def default_head(task: str) -> HeadConfig:
    """The head a task gets when the config does not say otherwise (from its TaskSpec)."""
    return HeadConfig(**TASKS[task].default_head)


def _default_heads() -> dict[str, HeadConfig]:
    return {name: default_head(name) for name in TASKS}


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heads: dict[str, HeadConfig] = field(default_factory=_default_heads)

    def __post_init__(self) -> None:
        known = sorted(TASKS)
        for task in self.train.tasks:
            if task not in TASKS:
                raise ConfigError(f"train.tasks: unknown task {task!r}; known: {known}")
        if not self.train.tasks:
            raise ConfigError("train.tasks: name at least one task")
        if len(set(self.train.tasks)) != len(self.train.tasks):
            raise ConfigError(f"train.tasks: repeated task in {self.train.tasks}")
        for task in self.heads:
            if task not in TASKS:
                raise ConfigError(f"heads.{task}: unknown task; known: {known}")
        for key in ("hidden_dropout", "attention_dropout"):
            value = getattr(self.model, key)
            if value != -1 and value < 0:
                raise ConfigError(f"model.{key}: -1 (the pretrained value) or in [0, 0.9]")
        for task in self.train.task_weights:
            if task not in self.train.tasks:
                raise ConfigError(
                    f"train.task_weights.{task}: not one of train.tasks {self.train.tasks}"
                )
        if self.train.log_conflicts_every and len(self.train.tasks) < 2:
            raise ConfigError("train.log_conflicts_every: needs two or more train.tasks")
        if self.train.log_conflicts_every and self.model.mode == "frozen":
            raise ConfigError(
                "train.log_conflicts_every: a frozen encoder has no shared gradients to compare"
            )
        smart = self.train.smart
        if smart.enabled and not (smart.weight or smart.bregman_weight):
            raise ConfigError(
                "train.smart.enabled: both train.smart.weight and train.smart.bregman_weight are 0"
            )
        if len(self.train.betas) != 2 or not all(0 <= b < 1 for b in self.train.betas):
            raise ConfigError(f"train.betas: two values in [0, 1), got {self.train.betas}")
        for task, head in self.heads.items():
            spec = TASKS[task]
            if head.kind == "cosine" and not (spec.is_pair and head.encoding == "bi"):
                raise ConfigError(
                    f"heads.{task}.kind: 'cosine' needs a bi-encoded pair task "
                    f"(set heads.{task}.encoding = 'bi')"
                )
            if head.calibrate and spec.label_kind != "binary":
                raise ConfigError(
                    f"heads.{task}.calibrate: only binary tasks have a decision threshold"
                )
            if head.label_smoothing and spec.label_kind != "class":
                raise ConfigError(
                    f"heads.{task}.label_smoothing: only multi-class tasks are smoothed"
                )
            if head.ordinal_width and spec.label_kind != "class":
                raise ConfigError(
                    f"heads.{task}.ordinal_width: only multi-class tasks have ordered classes"
                )
            if head.cosent and spec.label_kind != "score":
                raise ConfigError(f"heads.{task}.cosent: only score tasks are ranked")
            if head.contrastive and not (
                spec.is_pair and head.encoding == "bi" and spec.label_kind == "binary"
            ):
                raise ConfigError(
                    f"heads.{task}.contrastive: needs a bi-encoded binary pair task "
                    f"(set heads.{task}.encoding = 'bi')"
                )
            if head.contrastive and smart.enabled and task in self.train.tasks:
                raise ConfigError(
                    f"heads.{task}.contrastive: not combined with train.smart.enabled"
                )
            if head.rdrop and smart.enabled and task in self.train.tasks:
                raise ConfigError(f"heads.{task}.rdrop: not combined with train.smart.enabled")
            if head.rdrop and head.contrastive:
                raise ConfigError(
                    f"heads.{task}.rdrop: not combined with heads.{task}.contrastive (a "
                    "row's second copy would be one of its in-batch negatives)"
                )
            if head.swap and not (spec.is_pair and head.encoding == "bi"):
                raise ConfigError(
                    f"heads.{task}.swap: needs a bi-encoded pair task "
                    f"(set heads.{task}.encoding = 'bi')"
                )
            if any(h < 1 for h in head.hidden):
                raise ConfigError(f"heads.{task}.hidden: sizes must be >= 1, got {head.hidden}")

    def head(self, task: str) -> HeadConfig:
        return self.heads.get(task) or default_head(task)

    def bi_encoded(self, task: str) -> bool:
        """True when ``task`` is a pair task whose sentences are encoded one at a time."""
        return TASKS[task].is_pair and self.head(task).encoding == "bi"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def describe(config: Config) -> str:
    """Every key with its current value, allowed values and meaning (``minbert config --doc``)."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif (
                isinstance(value, dict)
                and value
                and dataclasses.is_dataclass(next(iter(value.values())))
            ):
                for name, sub in value.items():
                    walk(sub, f"{key}.{name}.")
            else:
                allowed = (
                    typing.get_args(hints[f.name])
                    if typing.get_origin(hints[f.name]) is Literal
                    else ()
                )
                choice = f" (one of {', '.join(map(str, allowed))})" if allowed else ""
                lines.append(f"{key} = {value!r}{choice}\n    {f.metadata.get('doc', '')}")

    walk(config, "")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Building a Config from nested dicts, with validation that names the key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, meta: dict, default: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of keys, got {value!r}")
        return _build(tp, value, key, default)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        out = dict(default or {})
        for k, v in value.items():
            sub_default = out.get(k)
            if sub_default is None and dataclasses.is_dataclass(value_type):
                sub_default = _default_for(value_type, k)
            out[k] = _convert(value_type, v, f"{key}.{k}", {}, sub_default)
        return out
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(item_type, v, f"{key}[{i}]", meta, None) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in configs")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    else:
        raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        raise ConfigError(f"{key}: {value!r} is below the minimum {low}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: {value!r} is above the maximum {high}")
    return value


def _default_for(cls: type, key: str) -> Any:
    if cls is HeadConfig and key in TASKS:
        return default_head(key)
    return cls()


def _build(cls: type, data: dict, prefix: str, default: Any) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    base = default if default is not None else cls()
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            where = f"[{prefix}]" if prefix else "the top level"
            raise ConfigError(f"unknown key {full!r}; keys of {where}: {sorted(fields)}")
        kwargs[key] = _convert(
            hints[key], value, full, dict(fields[key].metadata), getattr(base, key)
        )
    try:
        return dataclasses.replace(base, **kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-5"`` -> (["train", "lr"], 3e-05). Values are TOML; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=3e-5")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _set_path(tree: dict, path: list[str], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is a value, not a table")
        node = child
    node[path[-1]] = value


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    data = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        _set_path(data, path, value, text)
    return _build(Config, data, "", None)


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults, then the TOML file (if any), then ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
