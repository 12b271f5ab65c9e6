"""`uav train`: a typed wrapper over trainer.train. Recipe file first, then command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uav_cache.cli import on_interrupt
from uav_cache.config import field_defaults, field_help
from uav_cache.errors import UavError

H = field_help("uav_train.trainer.config", "TrainConfig")  # `uav train` options: help from the fields' comments
D = field_defaults("uav_train.trainer.config", "TrainConfig")  # … and each one's default, where no flag or recipe sets it


def _h(name: str, prefix: str = "") -> str:
    """An option's help: its field's comment and the default it falls back to."""
    return f"{prefix}{H.get(name, name)} (default: {D[name]})" if name in D else prefix + H.get(name, name)


def store_paths(values: list[str] | None) -> list[str] | None:
    """--store values (repeatable): each one a path or URL, or several joined by commas; a value that exists as it is
    is one path, so a folder whose name holds a comma can be given."""
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out += [v] if "://" in v or Path(v).exists() else [p for p in v.split(",") if p]
    return out


def _int(value: str, flag: str) -> int | str:
    """A block index as an int; a module path (token layers may be given either way) stays a string."""
    if value.lstrip("-").isdigit():
        return int(value)
    if flag == "--window":
        raise UavError(f"{flag} takes two token counts MIN,MAX, got {value!r}", f"e.g. {flag} 1,32")
    return value


def _forms(value: str | None) -> dict[str, float] | None:
    """--forms full=1,pooled=0.5 → {"full": 1.0, "pooled": 0.5}."""
    if not value:
        return None
    out = {}
    for part in value.split(","):
        name, eq, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if eq else 1.0
        except ValueError:
            raise UavError(f"--forms: {part!r} is not FORM=WEIGHT", "e.g. --forms full=1,pooled=0.5") from None
    return out


def train_command(
    store: Annotated[Optional[list[str]], typer.Option(help="repeatable or comma-separated: " + H["stores"]
                                                            + " (default: stores/DONOR)")] = None,
    decoder: Annotated[Optional[str], typer.Option(help=_h("decoder"))] = None,
    out: Annotated[Optional[str], typer.Option(help=_h("out"))] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="TOML recipe with a [train] table (pipelines/recipes/); the "
                                                        "options given here override it")] = None,
    adapter: Annotated[Optional[str], typer.Option(help=_h("adapter"))] = None,
    stage: Annotated[Optional[str], typer.Option(help=_h("stage"))] = None,
    steps: Annotated[Optional[int], typer.Option(help=_h("steps"))] = None,
    stage1_steps: Annotated[Optional[int], typer.Option(help=_h("stage1_steps"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_h("batch_size"))] = None,
    length_groups: Annotated[Optional[int], typer.Option(help=_h("length_groups"))] = None,
    lr_adapter: Annotated[Optional[float], typer.Option(help=_h("lr_adapter"))] = None,
    lr_lora: Annotated[Optional[float], typer.Option(help=_h("lr_lora"))] = None,
    donor: Annotated[Optional[str], typer.Option(help="Donor whose store to use (stores/DONOR) when --store is not given.")] = None,
    frozen_decoder: Annotated[Optional[str], typer.Option(help=_h("frozen_decoder"))] = None,
    init_from: Annotated[Optional[str], typer.Option(help=_h("init_from"))] = None,
    distill: Annotated[Optional[int], typer.Option(help=_h("distill"))] = None,
    no_lora: Annotated[bool, typer.Option("--no-lora", help=H["no_lora"])] = False,
    layers: Annotated[Optional[str], typer.Option(help=_h("layers", "comma-separated: "))] = None,
    readout: Annotated[Optional[str], typer.Option(help=_h("readout"))] = None,
    sources: Annotated[Optional[str], typer.Option(help=_h("sources", "comma-separated: "))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_h("seed"))] = None,
    device: Annotated[Optional[str], typer.Option(help=_h("device"))] = None,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help=H["grad_checkpointing"])] = False,
    token_layers: Annotated[Optional[str], typer.Option(help=_h("token_layers", "comma-separated: "))] = None,
    token_adapter: Annotated[Optional[str], typer.Option(help=_h("token_adapter"))] = None,
    lr_tokens: Annotated[Optional[float], typer.Option(help=_h("lr_tokens"))] = None,
    context: Annotated[Optional[float], typer.Option(help=_h("context"))] = None,
    yesno: Annotated[Optional[float], typer.Option(help=_h("yesno"))] = None,
    window: Annotated[Optional[str], typer.Option(help=_h("window", "MIN,MAX: "))] = None,
    forms: Annotated[Optional[str], typer.Option(help=_h("forms", "FORM=WEIGHT,…: "))] = None,
    warm_start: Annotated[Optional[bool], typer.Option("--warm-start/--no-warm-start", help=_h("warm_start"))] = None,
    merge_lora: Annotated[Optional[bool], typer.Option("--merge-lora/--no-merge-lora", help=_h("merge_lora"))] = None,
    stage1_task: Annotated[Optional[str], typer.Option(help=_h("stage1_task"))] = None,
    precision: Annotated[Optional[str], typer.Option(help=_h("precision"))] = None,
    sharding: Annotated[Optional[str], typer.Option(help=_h("sharding"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=_h("threads"))] = None,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help=H["skip_corrupt"])] = False,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help=H["allow_incomplete"])] = False,
) -> None:
    """Train an adapter (+ LoRA) that lets the decoder answer questions about a donor's activations.

    Without --recipe the defaults below apply. The settings the README measured are the [train] table of
    pipelines/recipes/demo.toml (mean read-out, warm start, stage 2 only): pass --recipe pipelines/recipes/demo.toml."""
    from uav_cache.distributed import Ranks
    from uav_train.run import resume_hint
    from uav_train.trainer import TrainConfig, train

    stores = store_paths(store) or ([f"stores/{donor}"] if donor else None)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    layer_names = split(layers)  # module paths or block indices; the store resolves indices to its paths
    ints = lambda v, flag: [_int(x, flag) for x in split(v)] if v else None  # noqa: E731
    if window is not None and len(split(window) or []) != 2:
        raise UavError(f"--window takes two token counts MIN,MAX, got {window!r}", "e.g. --window 1,32")
    over = dict(stores=stores, decoder=decoder, out=out, adapter=adapter, stage=stage, steps=steps,
                stage1_steps=stage1_steps, batch_size=batch_size, length_groups=length_groups, lr_adapter=lr_adapter, lr_lora=lr_lora, layers=layer_names, readout=readout, sources=split(sources), frozen_decoder=frozen_decoder, init_from=init_from, distill=distill, seed=seed, device=device,
                no_lora=no_lora or None, grad_checkpointing=grad_checkpointing or None, skip_corrupt=skip_corrupt or None,
                allow_incomplete=allow_incomplete or None, threads=threads,
                precision=precision, sharding=sharding, token_layers=ints(token_layers, "--token-layers"),
                token_adapter=token_adapter, lr_tokens=lr_tokens, context=context, yesno=yesno, window=ints(window, "--window"),
                forms=_forms(forms), warm_start=warm_start, stage1_task=stage1_task, merge_lora=merge_lora)
    cfg = TrainConfig.from_recipe(recipe, **over) if recipe else TrainConfig.from_dict({k: v for k, v in over.items() if v is not None})
    if donor and store:
        from uav_cache.store import Store
        for s in cfg.stores:
            if Store(s).meta["donor"] != donor:
                raise UavError(f"--store {s} was harvested from {Store(s).meta['donor']}, not --donor {donor}",
                               "drop --donor or point --store at that donor's store")
    on_interrupt(lambda: resume_hint(Path(cfg.out)))
    run = train(cfg)
    if Ranks.from_env().main:  # under torchrun every rank runs this; one line is enough
        typer.echo(f"run complete → {run} (adapter, lora/, metrics.jsonl, loss.png)")
