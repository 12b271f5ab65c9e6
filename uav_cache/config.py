"""Config dataclasses filled from TOML or JSON (recipes, adapter options): the one recipe reader, the one
table → dataclass loader with its type checks, and the fields' help text (litgpt's way: a setting is documented
once, by the trailing comment where its field is declared; the CLI options show that comment).

A recipe value of the wrong type is otherwise accepted and misread later: ``no_lora = "false"`` is a true
string, ``stage = 2`` never equals "2", ``steps = "ten"`` fails deep inside training. Each field is checked
against its dataclass annotation, before anything runs.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import io
import tokenize
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

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


T = TypeVar("T")


def read_recipe(path: str | Path) -> dict:
    """The one recipe reader: a TOML file, or one line naming why not (missing, not valid TOML)."""
    p = Path(path)
    if not p.exists():
        raise UavError(f"recipe {p} not found", "pass a file from pipelines/recipes/")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UavError(f"recipe {p} is not valid TOML: {e}", "fix the line it names") from e


def refuse_unknown(keys: Any, valid: Any, noun: str, where: str = "") -> None:
    """A misspelt key would otherwise be ignored silently and the defaults used: refuse it, naming the valid ones."""
    if bad := sorted(set(keys) - set(valid)):
        raise UavError(f"unknown {noun}(s) {bad}" + (f" in {where}" if where else ""), f"valid: {sorted(valid)}")


def check_bound(name: str, value: Any, low: float, fix: str, strict: bool = False) -> None:
    """Refuse a setting below ``low`` (or at it, ``strict``), NaN too, in one line naming it: the bound that keeps a
    run from dividing by zero or finishing having done nothing."""
    if not (value > low if strict else value >= low):  # (NaN fails both)
        raise UavError(f"{name} must be {'>' if strict else '≥'} {low}, got {value}", fix)


def from_table(cls: type[T], table: dict, where: str, noun: str = "key", **fixed: Any) -> T:
    """A TOML table (or JSON object) → ``cls``: unknown keys refused, each value checked against its field's
    annotation, a nested dataclass field built from its own table the same way. ``fixed`` are fields the caller
    sets (a recipe's table may not)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    refuse_unknown(table, set(fields) - set(fixed), noun, where)
    check_types(cls, table, where)
    hints = typing.get_type_hints(cls)
    d = dict(table)
    for key, value in table.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            d[key] = from_table(hints[key], value, f"{where} {key}".strip(), noun)
    return cls(**d, **fixed)


@functools.cache
def field_help(module: str, name: str) -> dict[str, str]:
    """The comment of each field of dataclass ``name`` in ``module``: the trailing one on its line, else the comment
    lines right above it (a field without either has no entry). That is the help of the CLI option that sets the
    field. Read from the source without importing the module, so `uav --help` stays torch-free."""
    spec = importlib.util.find_spec(module)
    src = Path(spec.origin).read_text(encoding="utf-8")
    lines = src.splitlines()
    trailing = {t.start[0]: t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT and not lines[t.start[0] - 1].lstrip().startswith("#")}
    cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == name)
    out = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if node.end_lineno in trailing:
            out[node.target.id] = trailing[node.end_lineno]
            continue
        above, i = [], node.lineno - 2  # index of the line above
        while i >= 0 and lines[i].lstrip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out


@functools.cache
def field_defaults(module: str, name: str) -> dict[str, str]:
    """The default of each field of dataclass ``name`` in ``module`` whose default is a literal, as a recipe would
    write it ("8", "mlp", "true", "none"): what `uav train --help` shows, since its options default to "not given"
    (the recipe's value, else this one). Read from the source, like :func:`field_help`."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    out = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            try:
                v = ast.literal_eval(node.value)
            except ValueError:  # field(default_factory=…), a name: no literal to show
                continue
            out[node.target.id] = {True: "true", False: "false", None: "none"}.get(v, str(v)) \
                if isinstance(v, (bool, type(None))) else str(v)
    return out
