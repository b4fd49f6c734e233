"""GradNorm (Chen et al. 2018): learn task weights that balance gradient norms.

The model is trained on ``sum_t w_t L_t``. After each step the weights move so that each
task's weighted gradient norm on one shared layer, ``G_t = w_t |d L_t / d W|``, approaches
``mean(G) * r_t^alpha``, where ``r_t = (L_t / L_t(0)) / mean(L / L(0))`` is the task's
inverse training rate: a task whose loss has fallen less than the others' gets a larger
target, so a larger weight. The target is a constant (as in the paper), so the gradient of
the GradNorm loss ``sum_t |G_t - target_t|`` with respect to ``w_t`` is
``sign(G_t - target_t) |d L_t / d W|``: no second-order backward is needed. The weights take
a step of their own AdamW, are kept positive and are renormalised to sum to the number of
tasks.

When a step holds only some tasks (round_robin, sequential), the other tasks' most recent
gradient norms and loss ratios stand in for theirs and only the present tasks' weights are
updated; with every task in every step (interleaved) this is exactly the paper's method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from minbert.config import ConfigError
from minbert.train.optim import AdamW
from minbert.train.strategies.base import GradientStrategy, weighted_backward

MIN_WEIGHT = 1e-3  # before renormalising; a weight at 0 would never get a gradient again


def layer_parameters(model: nn.Module, prefix: str) -> list[nn.Parameter]:
    """The trainable parameters whose names start with ``prefix`` (a module path such as
    ``encoder.encoder.layer.5``); ``""`` means the last encoder layer."""
    if not prefix:
        prefix = f"encoder.encoder.layer.{model.encoder.config.num_hidden_layers - 1}"
    if not prefix.startswith("encoder."):
        raise ConfigError(
            f"train.gradnorm.layer: {prefix!r} is not in the shared encoder; use a prefix "
            "such as 'encoder.encoder.layer.0' or 'encoder.embeddings'"
        )
    params = [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and (name == prefix or name.startswith(prefix + "."))
    ]
    if not params:
        raise ConfigError(
            f"train.gradnorm.layer: no trainable parameters under {prefix!r} (a frozen encoder "
            "has none); use a prefix such as 'encoder.encoder.layer.0' or 'encoder.embeddings'"
        )
    return params


class GradNormStrategy(GradientStrategy):
    name = "gradnorm"
    weights_change = True

    def __init__(
        self, tasks: Sequence[str], layer: Sequence[nn.Parameter], alpha: float, lr: float
    ):
        self.tasks = list(tasks)
        self.layer = list(layer)
        self.alpha = alpha
        # One scalar per task: a task absent from a step gets no gradient, so AdamW leaves
        # its weight (and moments) alone instead of moving it on stale momentum.
        self.weights = {t: nn.Parameter(torch.ones(())) for t in self.tasks}
        self.optimizer = AdamW(list(self.weights.values()), lr=lr, weight_decay=0.0)
        self.initial_loss: dict[str, float] = {}  # L_t(0): the task's first loss
        self.loss_ratio: dict[str, float] = {}  # latest L_t / L_t(0)
        self.grad_norm: dict[str, float] = {}  # latest |d L_t / d W| (unweighted)

    @classmethod
    def from_config(cls, train, model):
        if model is None:
            raise ValueError("the gradnorm strategy needs the model to find its shared layer")
        g = train.gradnorm
        return cls(train.tasks, layer_parameters(model, g.layer), g.alpha, g.lr)

    def backward(self, losses, shared_params):
        used = {t: self.weights[t].item() for t in losses}
        norms = {t: self._layer_grad_norm(loss) for t, loss in losses.items()}
        weighted_backward(losses, used)
        values = self.world.sum_floats({t: loss.item() for t, loss in losses.items()})
        for t, value in values.items():
            first = self.initial_loss.setdefault(t, value)
            self.loss_ratio[t] = value / first if first > 0 else 1.0
            self.grad_norm[t] = norms[t].item()
        self._update_weights(list(losses))
        return used

    def _layer_grad_norm(self, loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, self.layer, retain_graph=True, allow_unused=True)
        flat = [g.float().reshape(-1) for g in grads if g is not None]
        if not flat:
            return loss.new_zeros(())
        return torch.linalg.vector_norm(self.world.all_reduce_(torch.cat(flat)))

    def _update_weights(self, present: list[str]) -> None:
        known = [t for t in self.tasks if t in self.grad_norm]
        if len(known) < 2:
            return  # one task alone has nothing to be balanced against
        weighted = {t: self.weights[t].item() * self.grad_norm[t] for t in known}
        mean_norm = sum(weighted.values()) / len(known)
        mean_ratio = sum(self.loss_ratio[t] for t in known) / len(known)
        for t in present:
            target = mean_norm * (self.loss_ratio[t] / mean_ratio) ** self.alpha
            sign = (weighted[t] > target) - (weighted[t] < target)
            self.weights[t].grad = torch.tensor(sign * self.grad_norm[t])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            values = torch.stack([w.clamp(min=MIN_WEIGHT) for w in self.weights.values()])
            values *= len(self.tasks) / values.sum()
            for w, v in zip(self.weights.values(), values, strict=True):
                w.copy_(v)

    def current_weights(self) -> dict[str, float]:
        return {t: w.item() for t, w in self.weights.items()}

    def state_dict(self) -> dict:
        return {
            "weights": {t: w.detach().clone() for t, w in self.weights.items()},
            "optimizer": self.optimizer.state_dict(),
            "initial_loss": dict(self.initial_loss),
            "loss_ratio": dict(self.loss_ratio),
            "grad_norm": dict(self.grad_norm),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for t, value in state["weights"].items():
                self.weights[t].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.initial_loss = dict(state["initial_loss"])
        self.loss_ratio = dict(state["loss_ratio"])
        self.grad_norm = dict(state["grad_norm"])
