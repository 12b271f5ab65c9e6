"""The `uav` command: the application layer's entry point, the only command module that mounts every stage.

Every command is a thin typed wrapper over a Python function. Errors a user can cause (UavError, bad
arguments, missing files) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer ≥ 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    from click import exceptions as cx

from uav_cache.cli import data_app, harvest_command, models_command, store_app
from uav_cache.errors import UavError
from uav_train.cli import train_command
from uav_eval.cli import eval_command, explain_command

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(name="uav", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Universal Activation Verbalizer: a decoder LLM that explains other models' activations.")
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")
app.command("harvest")(harvest_command)
app.command("models")(models_command)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("explain")(explain_command)


@app.command("demo")
def demo_command(
    recipe: Annotated[Path, typer.Option(help="Recipe TOML: demo.toml (self, cross, transfer) or adapters.toml "
                                              "(affine / qformer, frozen decoder vs LoRA).")] = Path("pipelines/recipes/demo.toml"),
) -> None:
    """A recipe end to end: data → harvest every donor → train every run → eval with controls → comparison.
    Resumable; finished steps are skipped. The default is the embedded demo."""
    from pipelines.demo import run_demo

    run_demo(recipe)


@app.command("bench")
def bench_command(
    out: Annotated[Path, typer.Option(help="Where bench results go.")] = Path("bench"),
    scale: Annotated[float, typer.Option(help="Multiply the default (2-core CPU) sizes, e.g. 10 on a GPU box.")] = 1.0,
) -> None:
    """Measure harvest overhead, store formats, streaming, memory and generation; print ratios."""
    from pipelines.bench import run_bench

    run_bench(out, scale=scale)


def main() -> None:
    """Console entry point: one-line errors for user mistakes, tracebacks only for bugs; exit 0 only on success,
    1 when a check found something broken, 2 for usage errors and refused inputs, 130 when interrupted."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a shell without job control starts `uav … &` with SIGINT ignored; `kill -INT` must still stop a long
        # harvest or training (exit 130: a re-run resumes where it stopped)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    cmd = typer.main.get_command(app)
    try:
        # standalone_mode=False *returns* the code of a typer.Exit (and typer turns Ctrl-C into Exit(130))
        # instead of raising it: it must reach sys.exit, or `uav store verify` on a broken store exits 0
        code = cmd.main(standalone_mode=False, prog_name="uav")
    except UavError as e:
        typer.echo(f"uav: error: {e.problem}" + (f" (fix: {e.fix})" if e.fix else ""), err=True)
        sys.exit(2)
    except cx.NoArgsIsHelpError:  # typer has already printed the help
        sys.exit(0)
    except cx.UsageError as e:
        where = e.ctx.command_path if e.ctx else "uav"
        typer.echo(f"uav: error: {e.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except typer.Exit as e:
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except FileNotFoundError as e:
        typer.echo(f"uav: error: file not found: {e.filename or e} (fix: check the path)", err=True)
        sys.exit(2)
    except OSError as e:
        typer.echo(f"uav: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''} "
                   "(fix: check permissions and free disk space)", err=True)
        sys.exit(2)
    if code == 130:
        typer.echo("uav: interrupted (a re-run resumes where it stopped)", err=True)
    if isinstance(code, int) and code:  # a command's own return value is None: only Exit codes are ints
        sys.exit(code)


__all__ = ["app", "main"]
