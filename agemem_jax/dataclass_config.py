"""Config blocks generated from dataclasses, and dataclasses built from config blocks.

Each setting is written once: as a field of the frozen dataclass that reads it, with its
default and a comment. `block(cls)` turns the dataclass into an `ml_collections` block (so a new
field is a `--config.` flag at once) and `build(cls, block)` turns a block, a dict or None back
into the dataclass, refusing unknown keys (a typo in a sweep flag must never pass silently).
Validation lives in each dataclass's `__post_init__`, so it runs whichever way it was built.

This module imports nothing from the project: every layer may use it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections as mlc
from ml_collections.config_dict import placeholder

T = TypeVar("T")

_PLACEHOLDER_TYPES = (int, float, str, bool)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested(tp: Any) -> type | None:
    """The dataclass a field holds (directly or as `X | None`), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and isinstance(inner[0], type) and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _is_tuple(tp: Any) -> bool:
    return tp is tuple or typing.get_origin(tp) is tuple


def _placeholder_type(tp: Any) -> type:
    """The scalar type of an `X | None` field, so its None default can still be set by flag."""
    for arg in typing.get_args(tp):
        if arg in _PLACEHOLDER_TYPES:
            return arg
    raise TypeError(f"a None default needs a scalar type (int, float, str, bool), got {tp}")


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"config field {field.name!r} has no default")


def block(cls: type) -> mlc.ConfigDict:
    """An `ml_collections` block with one entry per field of `cls`, at its default."""
    hints = _hints(cls)
    out = mlc.ConfigDict()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = default_of(f)
        nested = _nested(tp)
        if nested is not None:
            out[f.name] = block(nested)
        elif value is None:
            out[f.name] = placeholder(_placeholder_type(tp))
        elif isinstance(value, Mapping):
            out[f.name] = mlc.ConfigDict(dict(value))
        else:
            out[f.name] = value
    return out


def _plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a mapping or an ml_collections block, got {type(cfg).__name__}")


def build(cls: type[T], cfg: Any = None, /, **overrides) -> T:
    """`cls` from None, an instance, a dict or an `ml_collections` block, plus overrides.

    Nested dataclass fields are built the same way; sequences become tuples where the field is a
    tuple (flags and YAML give lists). An unknown key raises one `ValueError` naming the known
    ones.
    """
    if isinstance(cfg, cls):
        return dataclasses.replace(cfg, **overrides) if overrides else cfg  # type: ignore[type-var]
    values = _plain(cfg) | overrides
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
    for name, value in values.items():
        tp = hints[name]
        nested = _nested(tp)
        if nested is not None and value is not None and not isinstance(value, nested):
            values[name] = build(nested, value)
        elif _is_tuple(tp) and isinstance(value, list | tuple):
            values[name] = tuple(value)
    return cls(**values)


def walk(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted path, field, type) of every leaf setting of `cls`, nested blocks included."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        nested = _nested(hints[f.name])
        if nested is not None:
            out += walk(nested, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, hints[f.name]))
    return out


_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def comments(cls: type, prefix: str = "") -> dict[str, str]:
    """The trailing `# comment` of each field line in `cls`'s source, by dotted path."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for line in source.splitlines():
        m = _FIELD_LINE.match(line)
        if m and m.group(1) in names:
            out.setdefault(f"{prefix}{m.group(1)}", m.group(2))
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        nested = _nested(hints[f.name])
        if nested is not None:
            out |= comments(nested, f"{prefix}{f.name}.")
    return out
