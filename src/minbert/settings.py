"""What every config table is made of: ``ConfigError``, ``setting`` (a documented field), and
the typed building of tables from TOML dicts (``build_table``) with errors that name the key.

Config tables live beside the code they configure (an objective's table in its own file);
``config.py`` assembles them. Both import from here, so neither imports the other's module.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import field
from typing import Any, Literal

from minbert.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration key or value that is not allowed."""


def setting(default: Any, doc: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with its documentation and numeric bounds (checked on loading)."""
    meta = {"doc": doc, "min": min, "max": max}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def describe(config: Any) -> str:
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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, meta: dict, default: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of keys, got {value!r}")
        return build_table(tp, value, key, default)
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
        if not math.isfinite(value):  # TOML has nan and inf; no setting means them
            raise ConfigError(f"{key}: {value!r} is not a finite number")
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
    """The default of a table added under a dict key (``heads.<task>``: the task's own)."""
    default_for = getattr(cls, "default_for", None)
    return default_for(key) if default_for is not None else cls()


def build_table(cls: type, data: dict, prefix: str = "", default: Any = None) -> Any:
    """An instance of the dataclass ``cls`` from a nested dict, each value checked."""
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


def set_path(tree: dict, path: list[str], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is a value, not a table")
        node = child
    node[path[-1]] = value


def deep_copy(d: dict) -> dict:
    return {k: deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}
