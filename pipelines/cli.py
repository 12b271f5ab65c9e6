"""The `uav` command: the application layer's entry point, the only command module that mounts every stage.

Every command is a thin typed wrapper over a Python function. Errors a user can cause (UavError, bad
arguments, missing files) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from uav_cache.cli import data_app, harvest_command, models_command, run_cli, store_app
from uav_cache.config import field_help
from uav_train.cli import train_command
from uav_eval.cli import eval_command, explain_command

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SERVE = field_help("pipelines.serve", "ServeConfig")  # `uav serve` options: help from the fields' comments

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


@app.command("serve")
def serve_command(
    run: Annotated[str, typer.Argument(help=SERVE["run"])],
    host: Annotated[str, typer.Option(help=SERVE["host"])] = "127.0.0.1",
    port: Annotated[int, typer.Option(help=SERVE["port"])] = 8000,
    device: Annotated[str, typer.Option(help=SERVE["device"])] = "cpu",
    donor: Annotated[Optional[str], typer.Option(help=SERVE["donor"])] = None,
) -> None:
    """A local explorer page over RUN (loaded once): paste a text, ask, see the answer beside its controls and
    score, and for token-reading runs one answer per token. Ctrl-C stops it."""
    from pipelines.serve import ServeConfig, serve

    serve(ServeConfig(run=run, host=host, port=port, device=device, donor=donor))


def main() -> None:
    """Console entry point (see uav_cache.cli.run_cli for the exit codes)."""
    run_cli(app, "uav")


__all__ = ["app", "main"]
