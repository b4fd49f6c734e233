"""AdamW written here (Loshchilov & Hutter 2019), parameter groups, and LR schedules.

The update matches ``torch.optim.AdamW``: decoupled decay ``p -= lr * wd * p`` first, then
Adam with bias-corrected moments, ``p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from minbert.model.adapters import is_adapter_parameter

log = logging.getLogger(__name__)


def _fused_update(p, g, m, v, decay_factor, beta1, beta2, step_size, eps):
    """One tensor's AdamW update, the same arithmetic as ``AdamW._update``, for torch.compile
    to fuse into one pass over memory (the scalars are 0-d tensors, so a new learning rate
    does not recompile)."""
    p.mul_(decay_factor)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).add_(g * g * (1 - beta2))
    p.sub_(step_size * m / (v.sqrt() + eps))


_compiled_update: Callable | None = None


def compiled_update() -> Callable | None:
    """``_fused_update`` compiled once per process (None where compiling fails)."""
    global _compiled_update
    if _compiled_update is None:
        _compiled_update = torch.compile(_fused_update, dynamic=True)
    return _compiled_update


class AdamW(Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        compiled: bool = False,
    ):
        """``compiled``: on the CPU, run each tensor's update as one torch.compile'd kernel
        (one pass over memory instead of seven); elsewhere, or if compiling fails, the
        multi-tensor path below."""
        self.compiled = compiled
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0: {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1): {betas}")
        super().__init__(
            params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """One update of the group's parameters that have a gradient this step."""
        lr, (beta1, beta2), eps, decay = (
            group["lr"],
            group["betas"],
            group["eps"],
            group["weight_decay"],
        )
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("AdamW does not support sparse gradients")
        for p in params:
            if not self.state[p]:
                self.state[p].update(
                    step=0,
                    exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                    exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                )
        # Parameters may be at different steps (a task head gets no gradient in steps of other
        # tasks), so tensors are updated in buckets of equal step count.
        buckets: dict[int, list[torch.Tensor]] = {}
        for p in params:
            self.state[p]["step"] += 1
            buckets.setdefault(self.state[p]["step"], []).append(p)
        for step, bucket in buckets.items():
            self._update(bucket, step, lr, beta1, beta2, eps, decay)

    def _update(self, params, step, lr, beta1, beta2, eps, decay) -> None:
        """Tensors at the same ``step``, with multi-tensor (``_foreach``) kernels.

        The update is memory-bound (four float tensors the size of the model), so it runs over
        all tensors at once, and the bias corrections are folded into the step size to save a
        pass: ``m / (sqrt(v / c2) + eps) = sqrt(c2) * m / (sqrt(v) + eps * sqrt(c2))``. Equal
        to the textbook form up to rounding.
        """
        grads = [p.grad for p in params]
        states = [self.state[p] for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        root_bias2 = math.sqrt(1 - beta2**step)
        step_size = lr * root_bias2 / (1 - beta1**step)
        if self.compiled and params[0].device.type == "cpu":
            scalars = [
                torch.tensor(x, dtype=params[0].dtype)
                for x in (1 - lr * decay, beta1, beta2, step_size, eps * root_bias2)
            ]
            done = 0
            try:
                update = compiled_update()
                for tensors in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
                    update(*(t.view(-1) for t in tensors), *scalars)
                    done += 1
                return
            except Exception as exc:  # no C++ compiler, an unsupported platform, ...
                log.warning("compiled AdamW update failed (%s); using the eager one", exc)
                self.compiled = False
            # the tensors not updated yet go the eager way
            params, grads, exp_avgs, exp_avg_sqs = (
                x[done:] for x in (params, grads, exp_avgs, exp_avg_sqs)
            )
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)  # decoupled weight decay
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)  # v = b2 v + (1-b2) g²
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps * root_bias2)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)


def no_decay(name: str) -> bool:
    """Biases and LayerNorm weights are not decayed (as in BERT's original recipe)."""
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def parameter_groups(
    model: nn.Module, weight_decay: float, lr_of: Callable[[str], float | None] | None = None
) -> list[dict]:
    """Decay / no-decay groups; ``lr_of(name)`` may give some parameters their own LR."""
    groups: dict[tuple[bool, float | None], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (not no_decay(name), lr_of(name) if lr_of else None)
            groups.setdefault(key, []).append(p)
    out = []
    for (decayed, lr), params in groups.items():
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if lr is not None:
            group["lr"] = lr
        out.append(group)
    return out


def peak_lr_rule(model: nn.Module, cfg) -> Callable[[str], float | None]:
    """A parameter's own peak LR by name (None: ``train.lr``): ``adapter.lr`` for an adapter's
    parameters, ``head_lr`` for the heads, and
    ``lr * layer_lr_decay ** depth`` for encoder layers ``depth`` below the top (the model
    says which are which: ``is_head_parameter``, ``depth_below_top``)."""

    adapter = getattr(model, "adapter", None)
    adapter_lr = adapter.config.lr if adapter is not None else 0.0

    def peak(name: str) -> float | None:
        if adapter_lr and is_adapter_parameter(name):
            return adapter_lr
        if cfg.head_lr and model.is_head_parameter(name):
            return cfg.head_lr
        depth = model.depth_below_top(name)
        if cfg.layer_lr_decay < 1 and depth:
            return cfg.lr * cfg.layer_lr_decay**depth
        return None

    return peak


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier of the peak LR at each step: linear warm-up, then linear/cosine decay to 0."""
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown LR schedule {kind!r}; use linear, cosine or constant")
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def warmup_schedule(
    optimizer: Optimizer, kind: str, total_steps: int, warmup_steps: int
) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda(kind, total_steps, warmup_steps))
