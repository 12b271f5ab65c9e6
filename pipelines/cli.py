"""The `uav` command: the application layer's entry point, the only command module that mounts every stage.

Every command is a thin typed wrapper over a Python function. Errors a user can cause (UavError, bad
arguments, missing files) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from uav_cache.cli import APP, data_app, harvest_command, models_command, on_interrupt, run_cli, store_app
from uav_cache.config import field_help
from uav_train.cli import train_command
from uav_eval.cli import eval_command, explain_command

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SERVE = field_help("pipelines.serve", "ServeConfig")  # `uav serve` options: help from the fields' comments

app = typer.Typer(name="uav", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Universal Activation Verbalizer: a decoder LLM that explains other models' activations.", **APP)
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
    seeds: Annotated[Optional[int], typer.Option(help="Train and evaluate every run with this many seeds (default: the "
                                                      "recipe's seeds, else 1); ≥ 2 also writes the spread over seeds "
                                                      "(runs/seeds.md|json).")] = None,
) -> None:
    """A recipe end to end: data → harvest every donor → train every run → eval with controls → comparison.
    Resumable; finished steps are skipped. The default is the embedded demo."""
    from pipelines.demo import run_demo

    on_interrupt(lambda: "finished harvests, trainings and evaluations are kept: the same command resumes")
    run_demo(recipe, seeds=seeds)


@app.command("bench")
def bench_command(
    out: Annotated[Path, typer.Option(help="Where bench results go.")] = Path("bench"),
    scale: Annotated[float, typer.Option(help="Multiply the default (2-core CPU) sizes, e.g. 10 on a GPU box.")] = 1.0,
) -> None:
    """Measure harvest overhead, store formats, streaming, memory and generation; print ratios."""
    from pipelines.bench import run_bench

    run_bench(out, scale=scale)


@app.command("plan")
def plan_command(
    recipe: Annotated[Optional[Path], typer.Option(help="A recipe (its first donor and first run); options below override it.")] = None,
    donor: Annotated[Optional[str], typer.Option(help="Donor: registry name or local folder.")] = None,
    decoder: Annotated[Optional[str], typer.Option(help="Decoder: registry name or local folder.")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="mlp | qformer | affine | lowrank.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Local data (recipe name, folder, JSONL): texts are counted.")] = None,
    texts: Annotated[Optional[int], typer.Option(help="Texts to harvest, when --data is not local.")] = None,
    chars_per_text: Annotated[Optional[float], typer.Option(help="Mean characters a text, when --data is not local.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Blocks to harvest, as for harvest (e.g. 15,20).")] = None,
    positions: Annotated[Optional[str], typer.Option(help="last, or all (every token stored too).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Token cap a text (default: the donor's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch (items a step).")] = None,
    max_answer_tokens: Annotated[Optional[int], typer.Option(help="Answer tokens an item.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16 (auto: bf16 on a GPU; with --device cpu, bf16 only where this CPU has bf16 units).")] = None,
    sharding: Annotated[Optional[str], typer.Option(help="ddp | fsdp (with --nproc > 1).")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Training processes, one a GPU.")] = None,
    donor_gpus: Annotated[Optional[int], typer.Option(help="GPUs a --device-map harvest spreads the donor over.")] = None,
    gpu_gib: Annotated[Optional[float], typer.Option(help="One GPU's memory in GiB (fits / does not fit).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda (a GPU box, the default) or cpu (this machine).")] = None,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Activations of one block kept, not all.")] = False,
    no_lora: Annotated[bool, typer.Option("--no-lora", help="Adapter only.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write every figure as JSON here.")] = None,
) -> None:
    """What a harvest and a training will cost, from the models' configs alone (nothing is loaded): store bytes,
    donor and decoder memory per GPU for the precision and sharding, tokens to process, and the assumptions."""
    import json

    from pipelines.plan import PlanInput, estimate, plan_from_recipe, render
    from uav_cache.cli import int_list

    over = dict(donor=donor, decoder=decoder, adapter=adapter, data=data, texts=texts, chars_per_text=chars_per_text,
                layers=len(int_list(layers, "--layers")) if layers else None, positions=positions,
                max_length=max_length, steps=steps, batch_size=batch_size, max_answer_tokens=max_answer_tokens,
                precision=precision, sharding=sharding, nproc=nproc, donor_gpus=donor_gpus, gpu_gib=gpu_gib,
                device=device, grad_checkpointing=grad_checkpointing or None, no_lora=no_lora or None)
    if recipe:
        pi = plan_from_recipe(recipe, **over)
    else:
        pi = PlanInput(**{k: v for k, v in over.items() if v is not None})
    if adapter and not recipe:
        pi.adapter_options = {}
    e = estimate(pi)
    typer.echo(render(e))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(e, indent=1, default=str))


@app.command("gpu-check")
def gpu_check_command(
    out: Annotated[Path, typer.Option(help="Where gpu-check.md / gpu-check.json go.")] = Path("runs/gpu-check"),
    form: Annotated[str, typer.Option(help="auto (cuda when a GPU is visible), cuda, or cpu (the small form CI runs).")] = "auto",
) -> None:
    """Does everything work on this machine, and how fast: harvest both embedded donors, train the demo's first run
    (10× its steps on a GPU), the bench, 2-GPU DDP / FSDP2 / device_map when there are 2 GPUs. One table; exit 1
    if a check failed."""
    from pipelines.gpu_check import run_gpu_check

    if any(r.ok is False for r in run_gpu_check(out, form)):
        raise typer.Exit(1)


@app.command("serve")
def serve_command(
    run: Annotated[str, typer.Argument(help=SERVE["run"])],
    host: Annotated[str, typer.Option(help=SERVE["host"])] = "127.0.0.1",
    port: Annotated[int, typer.Option(help=SERVE["port"])] = 8000,
    device: Annotated[str, typer.Option(help=SERVE["device"])] = "cpu",
    donor: Annotated[Optional[str], typer.Option(help=SERVE["donor"])] = None,
    max_question_tokens: Annotated[int, typer.Option(help=SERVE["max_question_tokens"])] = 128,
    max_body: Annotated[int, typer.Option(help=SERVE["max_body"])] = 1 << 20,
    read_timeout: Annotated[float, typer.Option(help=SERVE["read_timeout"])] = 10.0,
) -> None:
    """A local explorer page over RUN (loaded once): paste a text, ask, see the answer beside its controls and
    score, and for token-reading runs one answer per token. Ctrl-C stops it."""
    from pipelines.serve import ServeConfig, serve

    serve(ServeConfig(run=run, host=host, port=port, device=device, donor=donor, max_question_tokens=max_question_tokens,
                      max_body=max_body, read_timeout=read_timeout))


def main() -> None:
    """Console entry point (see uav_cache.cli.run_cli for the exit codes)."""
    run_cli(app, "uav")


__all__ = ["app", "main"]
