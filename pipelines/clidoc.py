"""docs/cli.md from the `uav` typer app itself: every command, its arguments and options, with the help `--help`
prints. Generated, so the page cannot drift from the code (a test compares the two).

    python -m pipelines.clidoc > docs/cli.md
"""

from __future__ import annotations

import inspect
import sys

import typer.main

try:  # typer ≥ 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import Command, Context
except ImportError:  # pragma: no cover
    from click import Command, Context

from pipelines.cli import app

HEADER = """# The `uav` command

Every command and its options, as `uav COMMAND --help` prints them. This page is generated from the command's own
definition (`python -m pipelines.clidoc > docs/cli.md`); a test fails when it is out of date, so edit the code, not
this page. Each command is a thin wrapper over a Python function a notebook can call (the
[README](../README.md#use-it-on-your-own-model) shows the pairs).

Under `torchrun`, `python -m uav_cache.harvest` and `python -m uav_train.trainer` take the options of `uav harvest`
and `uav train` ([gpu.md](gpu.md)). `make harvest`, `make train`, `make eval`, `make demo`, `make bench` and
`make gpu-check` run these commands with the Makefile's variables (`DONOR`, `DATA`, `STORE`, `RECIPE`, `RUN`,
`DECODER`, `NPROC`, `DEVICE_MAP`, `SEEDS`).

## Exit codes and refused inputs

Scripts can gate on the exit code (`uav store verify S && uav train …`):

| code | meaning |
|---|---|
| 0 | success, and only success |
| 1 | a check found something broken (`uav store verify`, `uav gpu-check`) |
| 2 | a usage error or a refused input: one line names the problem and the fix; nothing already written is touched |
| 130 | interrupted (Ctrl-C or `kill -INT`, also for a job a script started in the background) |

Harvest, train and demo say what a re-run resumes from (the committed shards, the last checkpoint); eval and
explain keep nothing. Damaged or unfinished inputs are refused before any work starts, each in one line naming
the file:
- a store whose tables (`examples/*`, `tokens/*`) lost or garbled a chunk; `uav store verify` lists every problem
  (exit 1), the activation shards' checksums included, and a folder that lost its root `zarr.json` is broken,
  not "not a store";
- a store whose harvest has not finished (a missing commit file) for `uav train` and `uav eval`, unless
  `--allow-incomplete` (the run then records how many rows it had); `uav store info` says "(complete)" only when
  every commit file is there;
- a run whose `config.json`, adapter or LoRA is missing or truncated, for `uav eval`, `uav explain` and
  `uav train --frozen-decoder` (a run trained with a LoRA is never evaluated as the bare decoder);
- a `--batch-size` larger than the training split, or a step estimated to need more memory than is free.

`tests/test_sweep.py` (bad inputs and damaged files), `tests/test_faults.py` and `tests/test_cli_exit.py` (exit
codes through the real console script) test these refusals.
"""


def _escape(text: str, code: bool = False) -> str:
    """Help text as Markdown (``code``: it goes inside backticks): outside `code`, an asterisk would start emphasis
    and a <word> would be taken for an HTML tag."""
    parts = text.split("`")
    for i in range(1 if code else 0, len(parts), 2):  # the pieces outside backticks
        parts[i] = parts[i].replace("*", "\\*").replace("<", "&lt;")
    return "`".join(parts)


def _cell(text: str, code: bool = False) -> str:
    """One table cell: one line, and a pipe escaped (in a table, even inside backticks)."""
    return _escape(" ".join(text.split()).replace("|", "\\|"), code)


def _section(cmd: Command, ctx: Context, level: int) -> list[str]:
    path = ctx.command_path
    lines = [f"{'#' * level} `{path}`", ""]
    lines += ["```", " ".join([path, *cmd.collect_usage_pieces(ctx)]), "```", ""]
    if cmd.help:
        lines += [_escape(inspect.cleandoc(cmd.help)), ""]
    rows = [p.get_help_record(ctx) for p in cmd.get_params(ctx)]
    rows = [r for r in rows if r is not None and r[0] != "--help"]
    if rows:
        lines += ["| argument or option | what it does |", "|---|---|"]
        lines += [f"| `{_cell(name, code=True)}` | {_cell(what)} |" for name, what in rows]
        lines.append("")
    if hasattr(cmd, "list_commands"):  # a group (`uav`, `uav data`, `uav store`): its commands follow
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            lines += _section(sub, Context(sub, info_name=name, parent=ctx), level + 1)
    return lines


def render() -> str:
    """The whole page, in the order `uav --help` lists the commands."""
    root = typer.main.get_command(app)
    ctx = Context(root, info_name="uav")
    lines = [HEADER.rstrip(), ""]
    lines += _section(root, ctx, 2)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
