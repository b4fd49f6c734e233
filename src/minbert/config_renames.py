"""Config keys that moved, and how a config written with the old spelling still loads."""

from __future__ import annotations

import logging

from minbert.objectives.task import TaskObjectiveConfig
from minbert.settings import ConfigError

log = logging.getLogger(__name__)

# Keys that moved, old spelling -> new (within ``heads.<task>`` -> ``objectives.<task>``).
# A config that uses an old one still loads, with a warning naming the new key.
MOVED_HEAD_KEYS = {
    "label_smoothing": ("label_smoothing",),
    "ordinal_width": ("ordinal_width",),
    "rdrop": ("rdrop", "weight"),
    "cosent": ("cosent", "weight"),
    "cosent_scale": ("cosent", "scale"),
    "contrastive": ("contrastive", "weight"),
    "contrastive_scale": ("contrastive", "scale"),
}


def move_renamed_keys(data: dict) -> None:
    """Old spellings (``MOVED_HEAD_KEYS``) to their new place, in place, warning once per key
    whose value is not the default (run folders saved before the move hold every key)."""
    heads = data.get("heads")
    if not isinstance(heads, dict):
        return
    defaults = TaskObjectiveConfig()
    for task, table in heads.items():
        if not isinstance(table, dict):
            continue
        for old, new in MOVED_HEAD_KEYS.items():
            if old not in table:
                continue
            value = table.pop(old)
            node = data.setdefault("objectives", {}).setdefault(task, {})
            if not isinstance(node, dict):
                raise ConfigError(f"objectives.{task}: expected a table")
            for part in new[:-1]:
                node = node.setdefault(part, {})
            new_key = f"objectives.{task}.{'.'.join(new)}"
            if new[-1] in node and node[new[-1]] != value:
                raise ConfigError(f"heads.{task}.{old} and {new_key} both set: keep {new_key}")
            node[new[-1]] = value
            default = defaults
            for part in new:
                default = getattr(default, part)
            if value != default:
                log.warning("heads.%s.%s is now %s (the old key still works)", task, old, new_key)
