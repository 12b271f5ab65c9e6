"""Type-checking config dataclasses filled from TOML or JSON (recipes, adapter options).

A recipe value of the wrong type is otherwise accepted and misread later: ``no_lora = "false"`` is a true
string, ``stage = 2`` never equals "2", ``steps = "ten"`` fails deep inside training. Each field is checked
against its dataclass annotation, before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from uav_cache.errors import UavError

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table",
          list: "a list", type(None): "absent"}


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (hint, dict))  # a TOML table; its own fields are checked by the caller
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return _NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def check_types(cls: type, data: dict, where: str) -> None:
    """Refuse any value in ``data`` whose type does not match the annotation of the field of ``cls`` it sets
    (unknown keys are the caller's to refuse, with its own list of valid keys)."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key in hints and not _fits(value, hints[key]):
            raise UavError(f"{where}: {key} = {value!r} must be {_describe(hints[key])}",
                           f"give {key} {_describe(hints[key])} (TOML: quote strings, not numbers or true/false)")
