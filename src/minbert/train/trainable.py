"""Which parameters train: ``train.trainable`` glob patterns over parameter names."""

from __future__ import annotations

import fnmatch

import torch

from minbert.model.adapters import is_base_parameter
from minbert.settings import ConfigError


def freeze_all_but(model: torch.nn.Module, patterns: list[str], base_frozen: bool = False) -> None:
    """Train the parameters whose names match one of the glob ``patterns``; freeze the rest.
    ``base_frozen``: the pretrained encoder's own weights stay frozen even where a pattern
    names them (an adapter trains in their place: ``adapter.train_base = false``)."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(f"train.trainable: {pattern!r} matches no parameter of the model")
    for name, p in model.named_parameters():
        named = any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        p.requires_grad_(named and not (base_frozen and is_base_parameter(name)))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"train.trainable: {patterns} leaves no parameter to train")
