"""`uav train`: a typed wrapper over trainer.train. Recipe file first, then command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uav_cache.config import field_help
from uav_cache.errors import UavError

H = field_help("uav_train.trainer", "TrainConfig")  # `uav train` options: help from the fields' comments


def train_command(
    store: Annotated[Optional[str], typer.Option(help="comma-separated: " + H["stores"] + "; default stores/DONOR")] = None,
    decoder: Annotated[Optional[str], typer.Option(help=H["decoder"])] = None,
    out: Annotated[Optional[str], typer.Option(help=H["out"])] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="TOML recipe with a [train] table (pipelines/recipes/).")] = None,
    adapter: Annotated[Optional[str], typer.Option(help=H["adapter"])] = None,
    stage: Annotated[Optional[str], typer.Option(help=H["stage"])] = None,
    steps: Annotated[Optional[int], typer.Option(help=H["steps"])] = None,
    stage1_steps: Annotated[Optional[int], typer.Option(help=H["stage1_steps"])] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=H["batch_size"])] = None,
    donor: Annotated[Optional[str], typer.Option(help="Donor whose store to use (stores/DONOR) when --store is not given.")] = None,
    frozen_decoder: Annotated[Optional[str], typer.Option(help=H["frozen_decoder"])] = None,
    no_lora: Annotated[bool, typer.Option("--no-lora", help=H["no_lora"])] = False,
    layers: Annotated[Optional[str], typer.Option(help="comma-separated: " + H["layers"])] = None,
    readout: Annotated[Optional[str], typer.Option(help=H["readout"])] = None,
    sources: Annotated[Optional[str], typer.Option(help="comma-separated: " + H["sources"])] = None,
    seed: Annotated[Optional[int], typer.Option(help=H["seed"])] = None,
    device: Annotated[Optional[str], typer.Option(help=H["device"])] = None,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help=H["grad_checkpointing"])] = False,
    precision: Annotated[Optional[str], typer.Option(help=H["precision"])] = None,
    sharding: Annotated[Optional[str], typer.Option(help=H["sharding"])] = None,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help=H["skip_corrupt"])] = False,
) -> None:
    """Train an adapter (+ LoRA) that lets the decoder answer questions about a donor's activations."""
    from uav_cache.distributed import Ranks
    from uav_train.trainer import TrainConfig, train

    stores = store.split(",") if store else ([f"stores/{donor}"] if donor else None)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    layer_names = split(layers)  # module paths or block indices; the store resolves indices to its paths
    over = dict(stores=stores, decoder=decoder, out=out, adapter=adapter, stage=stage, steps=steps,
                stage1_steps=stage1_steps, batch_size=batch_size, layers=layer_names, readout=readout, sources=split(sources), frozen_decoder=frozen_decoder, seed=seed, device=device,
                no_lora=no_lora or None, grad_checkpointing=grad_checkpointing or None, skip_corrupt=skip_corrupt or None,
                precision=precision, sharding=sharding)
    cfg = TrainConfig.from_recipe(recipe, **over) if recipe else TrainConfig.from_dict({k: v for k, v in over.items() if v is not None})
    if donor and store:
        from uav_cache.store import Store
        for s in cfg.stores:
            if Store(s).meta["donor"] != donor:
                raise UavError(f"--store {s} was harvested from {Store(s).meta['donor']}, not --donor {donor}",
                               "drop --donor or point --store at that donor's store")
    run = train(cfg)
    if Ranks.from_env().main:  # under torchrun every rank runs this; one line is enough
        typer.echo(f"run complete → {run} (adapter, lora/, metrics.jsonl, loss.png)")
