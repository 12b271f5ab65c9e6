"""Donor-side commands: `uav data build`, `uav harvest`, `uav store info|verify|probe`, `uav models`, and the
way every uav entry point runs (:func:`run_cli`).

Thin typed wrappers over the Python API (examples.build, harvest.harvest, store.Store): a notebook calls
the same functions.
"""

from __future__ import annotations

import errno
import signal
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

try:  # typer ≥ 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    from click import exceptions as cx

from uav_cache.config import field_help
from uav_cache.errors import UavError

H = field_help("uav_cache.harvest", "HarvestConfig")  # `uav harvest` options: help from the fields' comments

# Help is plain text: rich markup would eat "[train]" from a help line, and rich's tables cut long defaults and option
# names at 80 columns; click's formatter wraps to the terminal instead. Every uav Typer app is made with these.
APP = {"rich_markup_mode": None}
data_app = typer.Typer(help="Build the project's examples from data shipped in PyPI packages.", no_args_is_help=True,
                       **APP)
store_app = typer.Typer(help="Inspect and check activation stores.", no_args_is_help=True, **APP)

# What a re-run does after an interrupt, said only by the commands that resume (harvest, train, demo): each registers
# a function that reads it from disk at that moment. Eval and explain keep nothing: they register none.
_resume: list[Callable[[], str]] = []


def on_interrupt(hint: Callable[[], str]) -> None:
    """Register what `uav: interrupted (...)` says about a re-run of the running command."""
    _resume[:] = [hint]


# errno → the fix an OSError that reaches the CLI gets (anything else: the generic line)
OS_FIXES = {errno.EEXIST: "a file or folder of that name exists: choose another path",
            errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
            errno.EISDIR: "the path is a folder: give a file path",
            errno.ENOSPC: "free disk space, then re-run the same command",
            errno.EDQUOT: "free disk space (quota), then re-run the same command",
            errno.EACCES: "check the permissions of the path", errno.EPERM: "check the permissions of the path",
            errno.EROFS: "the file system is read-only: choose a writable path",
            errno.ENAMETOOLONG: "use a shorter path"}


def run_cli(app: typer.Typer | Callable, prog_name: str) -> None:
    """Run a typer app (or one command function, as `python -m uav_cache.harvest` does) the way every uav entry
    point runs: one-line errors for user mistakes, tracebacks only for bugs; exit 0 only on success, 1 when a
    check found something broken, 2 for usage errors and refused inputs, 130 when interrupted."""
    if not isinstance(app, typer.Typer):
        fn, app = app, typer.Typer(add_completion=False, pretty_exceptions_enable=False, **APP)
        app.command()(fn)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a shell without job control starts `uav … &` with SIGINT ignored; `kill -INT` must still stop a long
        # harvest or training (exit 130)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    cmd = typer.main.get_command(app)
    _resume.clear()  # only the command run now may say what a re-run of it does
    try:
        # standalone_mode=False *returns* the code of a typer.Exit (and typer turns Ctrl-C into Exit(130))
        # instead of raising it: it must reach sys.exit, or `uav store verify` on a broken store exits 0
        code = cmd.main(standalone_mode=False, prog_name=prog_name)
    except UavError as e:
        typer.echo(f"uav: error: {e.problem}" + (f" (fix: {e.fix})" if e.fix else ""), err=True)
        sys.exit(2)
    except cx.NoArgsIsHelpError:  # typer has already printed the help
        sys.exit(0)
    except cx.UsageError as e:
        where = e.ctx.command_path if e.ctx else prog_name
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
        fix = OS_FIXES.get(e.errno, "check the path, its permissions and free disk space")
        typer.echo(f"uav: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''} (fix: {fix})", err=True)
        sys.exit(2)
    if code == 130:
        hint = _resume[0]() if _resume else ""
        typer.echo("uav: interrupted" + (f" ({hint})" if hint else ""), err=True)
    if isinstance(code, int) and code:  # a command's own return value is None: only Exit codes are ints
        sys.exit(code)


def int_list(value: Optional[str], what: str) -> list[int] | None:
    """'15,20' → [15, 20], with a one-line error naming the bad item."""
    if value is None or value == "":
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UavError(f"{what} must be comma-separated integers, got {value!r}", f"e.g. {what} 15,20") from None


@data_app.command("build")
def data_build(
    recipe: Annotated[str, typer.Option(help="Which examples to build: demo (small), full, oracle (demo + nine "
                                             "labeled word-list sources + yes/no questions, with held-out datasets "
                                             "and phrasings) or oracle_full (the same, every item).")] = "demo",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default data/RECIPE).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the deterministic subset choice.")] = 0,
) -> None:
    """Turn the text and tables shipped in the data packages into examples.jsonl + manifest.json."""
    from uav_cache.examples import build

    ex = build(recipe, seed=seed)
    path = ex.save(out or Path("data") / recipe)
    sizes = ", ".join(f"{k} {v}" for k, v in ex.split_sizes().items())
    typer.echo(f"{len(ex.examples)} examples ({sizes}), fingerprint {ex.fingerprint[:12]} → {path}/examples.jsonl")
    if ex.meta.get("heldout_sources") is not None:
        qa = ex.qa_counts()
        held = set(ex.meta["heldout_sources"])
        for source, n in ex.source_counts().items():
            c = qa[source]
            typer.echo(f"  {source:24s} {n:5d} texts  {c['open']:5d} open  {c['yesno']:5d} yes/no "
                       f"({c['heldout_phrasing']} held-out phrasing)" + ("  HELD-OUT DATASET" if source in held else ""))
        typer.echo(f"held-out templates: {sum(map(len, ex.meta['heldout_templates'].values()))} of "
                   f"{sum(map(len, ex.meta['templates'].values()))} in {len(ex.meta['templates'])} families "
                   f"(listed in {path}/manifest.json)")


def harvest_command(
    donor: Annotated[str, typer.Option(help=H["donor"])] = "smollm2-135m",
    data: Annotated[str, typer.Option(help=H["data"])] = "demo",
    out: Annotated[Optional[str], typer.Option(help=H["out"])] = None,
    layers: Annotated[Optional[str], typer.Option(help=H["layers"])] = None,
    positions: Annotated[str, typer.Option(help=H["positions"])] = "last",
    token_layers: Annotated[Optional[str], typer.Option(help=H["token_layers"])] = None,
    readouts: Annotated[str, typer.Option(help="comma-separated: " + H["readouts"])] = "last,mean",
    dtype: Annotated[Optional[str], typer.Option(help=H["dtype"])] = None,
    batch_size: Annotated[int, typer.Option(help=H["batch_size"])] = 8,
    limit: Annotated[Optional[int], typer.Option(help=H["limit"])] = None,
    max_length: Annotated[Optional[int], typer.Option(help=H["max_length"])] = None,
    donor_input: Annotated[str, typer.Option(help=H["donor_input"])] = "raw",
    shard_rows: Annotated[int, typer.Option(help=H["shard_rows"])] = 4096,
    codec: Annotated[str, typer.Option(help=H["codec"])] = "raw",
    device: Annotated[str, typer.Option(help=H["device"])] = "auto",
    device_map: Annotated[Optional[str], typer.Option(help=H["device_map"])] = None,
    trust_remote_code: Annotated[bool, typer.Option(help=H["trust_remote_code"])] = False,
    threads: Annotated[Optional[int], typer.Option(help=H["threads"])] = None,
) -> None:
    """Run a donor once over a dataset and write (or resume) a Zarr activation store."""
    from uav_cache.harvest import HarvestConfig, harvest
    from uav_cache.store import Store

    cfg = HarvestConfig(donor=donor, data=data, out=out or f"stores/{Path(donor).name}", layers=int_list(layers, "--layers"),
                        positions=positions, token_layers=int_list(token_layers, "--token-layers"), readouts=[r.strip() for r in readouts.split(",") if r.strip()], dtype=dtype, batch_size=batch_size, limit=limit, max_length=max_length,
                        donor_input=donor_input, shard_rows=shard_rows, codec=codec, device=device,
                        device_map=device_map, trust_remote_code=trust_remote_code, threads=threads)
    on_interrupt(lambda: _harvest_resumes(cfg.out))
    path = harvest(cfg)
    if cfg.rank == 0:  # under torchrun every rank runs this; one summary is enough
        typer.echo(Store(path).info())


def _harvest_resumes(out: str) -> str:
    n = len(list((Path(out) / "_commits").glob("s*.json")))
    return (f"{n} shard(s) committed: the same command resumes after them" if n
            else "no shard committed yet: the same command starts over")


@store_app.command("info")
def store_info(path: Annotated[str, typer.Argument(help="Store folder or fsspec URL.")]) -> None:
    """Human summary: donor, layers, dtype, dataset, progress, per-layer stats."""
    from uav_cache.store import Store

    typer.echo(Store(path).info())


@store_app.command("verify")
def store_verify(path: Annotated[str, typer.Argument(help="Store folder or fsspec URL.")]) -> None:
    """Check every shard (committed, readable, right shape and dtype, finite, checksum) and every table. Exit 1 if
    broken."""
    from uav_cache.store import Store, damaged_root

    if damaged_root(path):  # a store that lost its metadata is broken, not "not a store"
        typer.echo(f"BROKEN {damaged_root(path)}", err=True)
        raise typer.Exit(1)
    st = Store(path)
    problems = st.verify()
    for p in problems:
        typer.echo(f"BROKEN {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {st.meta['n_shards']} shards, {st.n_rows} rows, {len(st.layers)} layer(s) verified")


@store_app.command("probe")
def store_probe(
    path: Annotated[str, typer.Argument(help="Store folder or fsspec URL.")],
    layers: Annotated[Optional[str], typer.Option(help="Stored layers (module paths), comma-separated (default: all).")] = None,
    readouts: Annotated[Optional[str], typer.Option(help="Read-outs, comma-separated (default: all stored).")] = None,
    sources: Annotated[Optional[str], typer.Option(help="Classification sources (default: all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the results as JSON here.")] = None,
) -> None:
    """Linear-probe ceiling: per classification source, layer and read-out, a logistic regression fitted on
    train, chosen on val, scored on test. Says which layer/read-out carries the label, and how far a
    verbalizer is from what the activation holds."""
    import json

    from uav_cache.probe import probe, table
    from uav_cache.store import Store

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    res = probe(Store(path), layers=split(layers), readouts=split(readouts), sources=split(sources))
    typer.echo(table(res))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.as_dict() for r in res], indent=1))


def models_command() -> None:
    """List the model registry (uav_cache/registry/*.toml)."""
    from uav_cache.models import list_models

    for m in list_models():
        src = m.source_kind if m.source_kind != "hub" else m.hub_id
        typer.echo(f"{m.name:14s} {m.family:12s} {m.kind:8s} layers {m.n_layers:3d} d {m.d_model:5d} "
                   f"read {m.layers} {m.dtype}  [{src}]")
