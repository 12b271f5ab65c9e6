"""Evaluation's own commands, `uav eval` and `uav explain`: thin typed wrappers over uav_eval's functions.

They drive evaluation alone; the `uav` app that mounts them (with the donor-side and training commands) is
the application layer, pipelines/cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uav_cache.cli import on_interrupt
from uav_cache.config import field_help
from uav_cache.errors import UavError
from uav_eval.methods import CONTROLS

H = field_help("uav_eval.protocol", "EvalConfig")  # `uav eval` options: help from the fields' comments


def eval_command(
    runs: Annotated[list[str], typer.Argument(help="Run directory (several with --compare).")],
    store: Annotated[Optional[str], typer.Option(help=H["store"])] = None,
    limit: Annotated[Optional[int], typer.Option(help=H["limit"])] = None,
    data: Annotated[Optional[str], typer.Option(help=H["data"])] = None,
    split: Annotated[Optional[str], typer.Option(help=H["split"])] = None,
    controls: Annotated[str, typer.Option(help=f"Comma-separated controls: {','.join(CONTROLS)} (or none). shuffled "
                                                   "(another item's activation, same prompt) is what says whether the "
                                                   "decoder reads.")] = ",".join(CONTROLS),
    compare: Annotated[bool, typer.Option("--compare", help="Only tabulate the finished evaluations of several runs side by "
                                                            "side (with --limit N: those limited to N items), one row "
                                                            "per run and dataset.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="With --compare: folder for compare.md/compare.png.")] = None,
    batch_size: Annotated[int, typer.Option(help=H["batch_size"])] = 16,
    no_similarity: Annotated[bool, typer.Option("--no-similarity", help=f"Skip the {H['similarity']}.")] = False,
    device: Annotated[str, typer.Option(help=H["device"])] = "auto",
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help=H["allow_incomplete"])] = False,
) -> None:
    """Evaluate a run on the held-out test split against controls; write results.json, report.md, plots
    (with --limit N: results-limitN.json, report-limitN.md …, beside a full evaluation, never over it; other controls
    add a digest of them: results-<settings>.json). Another dataset (--store, --data) or split lands in
    RUN/evals/<dataset>-<fingerprint>[-<split>]/, never over the run's own results."""
    from uav_eval.report import compare as compare_runs, summary_table

    if compare:
        typer.echo(compare_runs(runs, out, limit))
        return
    if len(runs) != 1:
        raise UavError(f"eval takes one run, got {len(runs)}", "pass one RUN, or add --compare to tabulate several")
    from uav_eval.protocol import EvalConfig, evaluate, harvest_hint

    if data is not None:  # its harvest is kept when interrupted, and the same command resumes it
        on_interrupt(lambda: harvest_hint(runs[0], data))
    methods = ["uav"] + [c for c in controls.split(",") if c and c != "none"]
    res = evaluate(EvalConfig(run=runs[0], store=store, data=data, split=split, limit=limit, methods=methods, batch_size=batch_size,
                              similarity=not no_similarity, device=device, allow_incomplete=allow_incomplete))
    typer.echo(summary_table(res))
    typer.echo(f"report → {res.file('report', 'md')}")


def explain_command(
    run: Annotated[str, typer.Option(help="A finished run directory.")],
    text: Annotated[str, typer.Option(help="The text the donor reads.")],
    question: Annotated[list[str], typer.Option(help="Question(s) to ask about the activation (repeatable).")] = ["What does this representation encode?"],  # noqa: B006
    max_new_tokens: Annotated[int, typer.Option(help="Answer length cap.")] = 32,
    device: Annotated[str, typer.Option(help=H["device"])] = "auto",
    donor: Annotated[Optional[str], typer.Option(help="The donor model (registry name or folder), when the run's "
                                                      "is not found: e.g. a local folder harvested elsewhere.")] = None,
    cut: Annotated[bool, typer.Option("--cut", help="A text longer than the donor's token cap (the one its store was "
                                                    "harvested with): read its first tokens, and say so, instead of "
                                                    "refusing it.")] = False,
    context: Annotated[Optional[str], typer.Option(help="Text the donor reads before TEXT; the run is then shown "
                                                        "TEXT's positions only (in context): what it names there, the "
                                                        "donor carried forward.")] = None,
) -> None:
    """Run the donor on TEXT (loaded, read, freed), then the decoder: print its explanation."""
    from uav_eval.verbalizer import explain

    for q, a in explain(run, text, question, max_new_tokens=max_new_tokens, device=device, donor=donor, cut=cut,
                        context=context):
        typer.echo(f"Q: {q}\nA: {a}")
