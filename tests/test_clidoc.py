"""docs/cli.md is generated from the `uav` typer app: it must match what the app says now, and cover every command."""

from __future__ import annotations

from pathlib import Path

import typer
import typer.main

from pipelines import clidoc
from pipelines.cli import app

ROOT = Path(__file__).resolve().parents[1]


def leaf_paths(group, prefix: str) -> list[str]:
    """Every runnable command of a click group, as `uav store info` would be typed."""
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        out += leaf_paths(cmd, path) if hasattr(cmd, "commands") else [path]
    return out


def test_cli_page_is_up_to_date():
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == clidoc.render(), "docs/cli.md is out of date: run `python -m pipelines.clidoc > docs/cli.md`"


def test_every_command_and_option_is_on_the_page():
    page = clidoc.render()
    commands = leaf_paths(typer.main.get_command(app), "uav")
    assert {"uav harvest", "uav train", "uav eval", "uav serve", "uav store verify", "uav data build"} <= set(commands)
    for path in commands:
        assert f"`{path}`" in page, path
    for flag in ("--token-layers", "--frozen-decoder", "--controls", "--device-map", "--port"):
        assert f"`{flag} " in page, flag


def test_help_text_is_escaped_for_markdown():
    """A pipe would split a table cell; <word> outside code would vanish as an HTML tag; `code` stays as written."""
    demo = typer.Typer(rich_markup_mode=None)

    @demo.command("one")
    def one(mode: str = typer.Option("a", help="a | b, written to RUN/<name>/ by `x <y> *z*`")) -> None:
        """Lands in RUN/evals/<dataset>/ *now*."""

    @demo.command("two")
    def two() -> None:
        """Second command, so `one` keeps its name."""

    old = clidoc.app
    try:
        clidoc.app = demo
        page = clidoc.render()
    finally:
        clidoc.app = old
    assert "Lands in RUN/evals/&lt;dataset>/ \\*now\\*." in page
    assert "| `--mode <str>` | a \\| b, written to RUN/&lt;name>/ by `x <y> *z*` [default: a] |" in page
