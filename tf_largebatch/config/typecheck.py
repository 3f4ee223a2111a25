"""YAML values against the schema's type annotations.

:func:`build_dataclass` turns a mapping into a schema dataclass, checking every
key is known and every value has the annotated type (``bool`` is not a number,
``inf``/``nan`` are not numbers, a ``Literal`` lists its choices), with the key
path in every error.
"""

import dataclasses
import math
import numbers
import typing
from typing import Literal, Union

from tf_largebatch.config.errors import ConfigError, describe


def expected(annotation):
    """A human description of a type annotation."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of {expected(item).removeprefix('a ').removeprefix('an ')}s"
    if origin is Union:
        parts = [expected(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(parts)
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return str(annotation)


def _matches(annotation, value):
    """Whether a scalar ``value`` has the (non-Union, non-list) ``annotation``."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict:
        return isinstance(value, dict)
    if origin is Literal:
        choices = typing.get_args(annotation)
        return value in choices and not (isinstance(value, bool) and True not in choices)
    return True


def check_value(annotation, value, path):
    """Returns ``value`` converted to ``annotation`` or raises ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is Union:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {expected(annotation)}, got {describe(value)}")
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected {expected(annotation)}, got {describe(value)}")
        (item,) = typing.get_args(annotation)
        return [check_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not _matches(annotation, value):
        raise ConfigError(path, f"expected {expected(annotation)}, got {describe(value)}")
    return float(value) if annotation is float else value


def build_dataclass(cls, raw, path):
    """``cls(**raw)`` with every key known and every value of its annotated type.

    Args:
        cls: a schema dataclass.
        raw: its mapping (``None`` is an empty mapping).
        path: the key path of ``raw`` (``''`` for the top level).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path or "<top level>", f"expected a mapping, got {describe(raw)}")
    hints = typing.get_type_hints(cls)
    internal = set(getattr(cls, "INTERNAL_KEYS", ()))
    fields = {f.name for f in dataclasses.fields(cls)} - internal
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(key_path, _unknown_key_message(cls, key_path, fields))
        kwargs[key] = check_value(hints[key], value, key_path)
    return cls(**kwargs)


def _unknown_key_message(cls, key_path, fields):
    """``unknown key; expected one of ...`` (the file's own top-level keys included),
    or the new name of a renamed key."""
    from tf_largebatch.config.schema import RENAMED_KEYS

    if key_path in RENAMED_KEYS:
        return f"renamed to {RENAMED_KEYS[key_path]} (same meaning); use that key"
    known = ", ".join(sorted(fields | set(getattr(cls, "FILE_KEYS", ()))))
    if key_path.rsplit(".", 1)[-1] in getattr(cls, "INTERNAL_KEYS", ()):
        return f"set by the loader, not a key of a file (a phase's name is phases[].name); expected one of: {known}"
    return f"unknown key; expected one of: {known}"
