"""SMART regularisation (Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning for
Pre-trained Natural Language Models through Principled Regularized Optimization").

Smoothness-inducing adversarial regulariser, added to each task's loss with weight lambda:

    R_s = l_s(f(x + d), f(x)),  d ~ argmax over |d|_inf <= eps of l_s(f(x + d), f(x)),

where ``x`` is the word-embedding output, ``d`` starts as Gaussian noise (std sigma) and takes
``steps`` projected ascent steps ``d <- clip(d + eta g / |g|_inf, -eps, eps)`` (``|g|_inf``
per token, as in the authors' MT-DNN code). ``l_s`` is the symmetric KL divergence for class
and binary heads (a binary logit z is the two-class distribution softmax([0, z])) and the
squared error for score heads. With ``bregman_weight`` mu > 0, the Bregman proximal-point
term ``mu * l_s(f(x; theta), f(x; teacher))`` keeps the model near a momentum teacher,
``teacher <- beta teacher + (1 - beta) theta`` after every optimiser step.

How it is wired:
- The perturbation enters through a forward hook on ``encoder.embeddings.word_embeddings``,
  registered only for SMART's own forwards, so the normal path is unchanged. It works for
  every head: single sentences, cross-encoded pairs, bi-encoded pairs (both sentences in one
  encoder call, one perturbation of shape (2B, T, H)), and heads that call the encoder more
  than once (one perturbation per call). Padding positions are never perturbed.
- The perturbed and teacher forwards replay the random state of the clean forward, so they
  see the same dropout masks (and a bi-encoder's same random swap): the term measures the
  perturbation alone and is exactly 0 at d = 0 or for a model whose output is constant.
- Gradients of the final term reach the model through both the clean and the perturbed
  outputs; ``d`` itself is a constant there.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minbert.data.batching import Batch
from minbert.data.tasks import TASKS
from minbert.objectives.base import Term
from minbert.settings import ConfigError, setting


@dataclass(frozen=True)
class SmartConfig:
    """SMART (Jiang et al. 2020): adversarial smoothness on the word embeddings, optionally
    with a Bregman proximal-point term towards a momentum teacher."""

    enabled: bool = setting(False, "add the SMART regulariser to every task's loss")
    weight: float = setting(1.0, "lambda_s: weight of the smoothness term", min=0.0)
    epsilon: float = setting(
        1e-5, "radius of the L-inf ball the embedding perturbation stays in", min=0.0
    )
    step_size: float = setting(1e-3, "eta: step of each projected ascent step", min=0.0)
    steps: int = setting(1, "projected ascent steps per batch (0: random noise only)", min=0)
    noise_std: float = setting(1e-5, "sigma of the Gaussian the perturbation starts from", min=0.0)
    bregman_weight: float = setting(
        0.0, "mu: weight of the Bregman proximal-point term (0: no momentum teacher)", min=0.0
    )
    bregman_beta: float = setting(
        0.99,
        "beta: momentum of the teacher, teacher = beta teacher + (1 - beta) model",
        min=0.0,
        max=1.0,
    )

    def check(self) -> None:
        if self.enabled and not (self.weight or self.bregman_weight):
            raise ConfigError(
                "train.smart.enabled: both train.smart.weight and train.smart.bregman_weight are 0"
            )


def symmetric_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) + KL(q || p) of two batches of logits (B, C), averaged over the batch."""
    p = F.log_softmax(p_logits.float(), dim=-1)
    q = F.log_softmax(q_logits.float(), dim=-1)
    return ((p.exp() - q.exp()) * (p - q)).sum(-1).mean()


def divergence(label_kind: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """l_s of two head outputs: symmetric KL for ``class`` and ``binary`` heads, mean squared
    error for ``score`` heads."""
    if label_kind == "score":
        return F.mse_loss(outputs.float(), targets.float())
    if label_kind == "binary":
        outputs, targets = _two_class(outputs), _two_class(targets)
    return symmetric_kl(outputs, targets)


def _two_class(logit: Tensor) -> Tensor:
    logit = logit.float()
    return torch.stack([torch.zeros_like(logit), logit], dim=-1)  # (B, 2): sigmoid as softmax


class _EmbeddingHook:
    """Forward hook on the word embeddings: records each call's token ids, or adds that
    call's perturbation to its output."""

    def __init__(self, deltas: list[Tensor] | None = None):
        self.deltas = deltas
        self.token_ids: list[Tensor] = []
        self.calls = 0

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        call, self.calls = self.calls, self.calls + 1
        if self.deltas is None:
            self.token_ids.append(inputs[0])
            return None
        return output + self.deltas[call].to(output.dtype)


@contextmanager
def _hooked(model: nn.Module, hook: _EmbeddingHook) -> Iterator[None]:
    handle = model.encoder.embeddings.word_embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextmanager
def _replayed_rng(state: tuple[Tensor, Tensor | None], device: torch.device) -> Iterator[None]:
    """Run with the random state ``state``, then put the current one back."""
    saved = _rng_state(device)
    _set_rng_state(state, device)
    try:
        yield
    finally:
        _set_rng_state(saved, device)


class Smart:
    """The SMART term of each task's loss; ``forward`` replaces the model's forward in a
    training step, ``after_step`` moves the momentum teacher after each optimiser step."""

    def __init__(self, config: SmartConfig, model: nn.Module):
        self.config = config
        self.teacher: nn.Module | None = None
        if config.bregman_weight > 0:
            self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.last_perturbation: list[Tensor] = []  # of the latest batch, for inspection

    def forward(self, model: nn.Module, task: str, batch: Batch) -> tuple[Tensor, Tensor]:
        """The model's outputs on ``batch`` and the task's SMART term,
        ``lambda * R_s + mu * D_Bregman`` (a scalar)."""
        cfg = self.config
        device = batch.segments[0].input_ids.device
        start = _rng_state(device)
        recorder = _EmbeddingHook()
        with _hooked(model, recorder):
            outputs = model(task, batch)
        kind = TASKS[task].label_kind
        term = torch.zeros((), device=outputs.device)
        if cfg.weight:
            deltas = self.perturbation(model, task, batch, outputs.detach(), recorder, start)
            perturbed = self._forward_with(model, task, batch, deltas, start)
            term = term + cfg.weight * divergence(kind, perturbed, outputs)
        if self.teacher is not None:
            for mine, theirs in zip(self.teacher.modules(), model.modules(), strict=True):
                mine.training = theirs.training  # same dropout as the model (frozen parts too)
            with torch.no_grad(), _replayed_rng(start, device):
                teacher_outputs = self.teacher(task, batch)
            term = term + cfg.bregman_weight * divergence(kind, outputs, teacher_outputs)
        return outputs, term

    def perturbation(
        self,
        model: nn.Module,
        task: str,
        batch: Batch,
        clean: Tensor,
        recorder: _EmbeddingHook,
        rng: tuple[Tensor, Tensor | None],
    ) -> list[Tensor]:
        """Noise, then projected ascent on l_s(f(x + d), clean): one perturbation per encoder
        call of the clean forward, each inside [-eps, eps] and 0 on padding."""
        cfg = self.config
        encoder = model.encoder.config
        kind = TASKS[task].label_kind
        keep = [(ids != encoder.pad_token_id).unsqueeze(-1).float() for ids in recorder.token_ids]
        deltas = [
            (torch.randn(*m.shape[:2], encoder.hidden_size, device=m.device) * cfg.noise_std)
            .clamp(-cfg.epsilon, cfg.epsilon)
            .mul(m)
            for m in keep
        ]  # each (B', T, H)
        for _ in range(cfg.steps):
            deltas = [d.requires_grad_(True) for d in deltas]
            perturbed = self._forward_with(model, task, batch, deltas, rng)
            grads = torch.autograd.grad(
                divergence(kind, perturbed, clean), deltas, allow_unused=True
            )
            deltas = [
                (d.detach() + cfg.step_size * _unit(g, d)).clamp(-cfg.epsilon, cfg.epsilon).mul(m)
                for d, g, m in zip(deltas, grads, keep, strict=True)
            ]
        self.last_perturbation = [d.detach() for d in deltas]
        return self.last_perturbation

    def _forward_with(
        self,
        model: nn.Module,
        task: str,
        batch: Batch,
        deltas: list[Tensor],
        rng: tuple[Tensor, Tensor | None],
    ) -> Tensor:
        hook = _EmbeddingHook(deltas)
        with _hooked(model, hook), _replayed_rng(rng, deltas[0].device):
            outputs = model(task, batch)
        if hook.calls != len(deltas):
            raise RuntimeError(
                f"SMART: the {task} head called the encoder {len(deltas)} times in the clean "
                f"forward and {hook.calls} times in the perturbed one; it must be the same"
            )
        return outputs

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """teacher <- beta teacher + (1 - beta) model, after each optimiser step."""
        if self.teacher is None:
            return
        mine = list(self.teacher.parameters())
        theirs = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(mine, theirs, 1.0 - self.config.bregman_beta)

    def state_dict(self) -> dict:
        return {} if self.teacher is None else {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])


def _unit(grad: Tensor | None, like: Tensor) -> Tensor:
    """The ascent direction: the gradient over its per-token max-abs (0 where it is 0)."""
    if grad is None:
        return torch.zeros_like(like)
    return grad / grad.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)


class SmartTerm(Term):
    """SMART as a term of one task's loss. One ``Smart`` (one teacher) serves every task."""

    name = "smart"
    Config = SmartConfig
    owns_forward = True  # the perturbed forwards replay the clean one's random state

    def __init__(self, smart: Smart):
        self.smart = smart

    def forward(self, model: nn.Module, task: str, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.smart.forward(model, task, batch)
