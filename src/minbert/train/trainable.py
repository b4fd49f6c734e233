"""Which parameters train: ``train.trainable`` glob patterns over parameter names."""

from __future__ import annotations

import fnmatch

import torch

from minbert.settings import ConfigError


def freeze_all_but(model: torch.nn.Module, patterns: list[str]) -> None:
    """Train the parameters whose names match one of the glob ``patterns``; freeze the rest."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(f"train.trainable: {pattern!r} matches no parameter of the model")
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
