"""uav_cache.config: the one recipe reader, the table → dataclass loader and the fields' help text."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import pytest

from uav_cache.config import field_help, from_table, read_recipe
from uav_cache.errors import UavError


@dataclass
class Inner:
    r: int = 8  # the rank


@dataclass
class Outer:
    name: str = "x"  # what it is called
    # a comment above is the help of a field without a trailing one
    steps: int = 1
    inner: Inner = field(default_factory=Inner)
    fixed: str = ""


def test_from_table_builds_nested_tables_and_refuses_unknown_or_mistyped_keys():
    cfg = from_table(Outer, {"name": "y", "inner": {"r": 4}}, "recipe r.toml [t]", fixed="set")
    assert cfg == Outer(name="y", inner=Inner(r=4), fixed="set")
    with pytest.raises(UavError, match=r"unknown key\(s\) \['stpes'\] in recipe r.toml \[t\]"):
        from_table(Outer, {"stpes": 2}, "recipe r.toml [t]")
    with pytest.raises(UavError, match=r"unknown setting\(s\) \['fixed'\]"):  # the caller's to set
        from_table(Outer, {"fixed": "no"}, "t", noun="setting", fixed="set")
    with pytest.raises(UavError, match=r"t inner: r = '4' must be an integer"):
        from_table(Outer, {"inner": {"r": "4"}}, "t")


def test_read_recipe_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(UavError, match="recipe .*nope.toml not found"):
        read_recipe(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("= broken")
    with pytest.raises(UavError, match="is not valid TOML"):
        read_recipe(tmp_path / "bad.toml")


def test_field_help_is_each_fields_comment_and_the_cli_shows_it():
    assert field_help(__name__, "Outer") == {"name": "what it is called",
                                             "steps": "a comment above is the help of a field without a trailing one"}
    from uav_cache.cli import harvest_command
    from uav_cache.harvest import HarvestConfig

    helps = field_help("uav_cache.harvest", "HarvestConfig")
    assert set(helps) >= {"donor", "data", "out", "layers", "batch_size", "device"} and set(helps) <= {
        f for f in HarvestConfig.__dataclass_fields__}
    option = typing.get_type_hints(harvest_command, include_extras=True)["batch_size"].__metadata__[0]
    assert option.help == helps["batch_size"] == "texts per forward pass"
