"""`uav train`: a typed wrapper over trainer.train. Recipe file first, then command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uav_cache.errors import UavError


def train_command(
    store: Annotated[Optional[str], typer.Option(help="Store path(s)/URL(s), comma-separated (default stores/DONOR).")] = None,
    decoder: Annotated[Optional[str], typer.Option(help="Decoder LLM: registry name or local folder.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run directory (resumes if it holds an unfinished run).")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="TOML recipe with a [train] table (pipelines/recipes/).")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="mlp | qformer | affine | lowrank")] = None,
    stage: Annotated[Optional[str], typer.Option(help="1 (alignment), 2 (QA) or both.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Stage-2 steps.")] = None,
    stage1_steps: Annotated[Optional[int], typer.Option(help="Stage-1 steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Items per step.")] = None,
    donor: Annotated[Optional[str], typer.Option(help="Donor whose store to use (stores/DONOR) when --store is not given.")] = None,
    frozen_decoder: Annotated[Optional[str], typer.Option(help="RUN_A: keep its LoRA frozen, train only a new adapter.")] = None,
    no_lora: Annotated[bool, typer.Option("--no-lora", help="Frozen decoder: train the adapter only.")] = False,
    layers: Annotated[Optional[str], typer.Option(help="Stored layers to read, comma-separated module paths or block "
                                                       "indices (default: every stored layer); see `uav store info`.")] = None,
    readout: Annotated[Optional[str], typer.Option(help="Stored read-out: last (last token) or mean (mean over tokens "
                                                        "after the sink); `uav store probe` shows which carries more.")] = None,
    sources: Annotated[Optional[str], typer.Option(help="Train on these sources only, comma-separated (default: all).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda …")] = None,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Trade compute for memory.")] = False,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable store chunks (counted, warned) instead of stopping.")] = False,
) -> None:
    """Train an adapter (+ LoRA) that lets the decoder answer questions about a donor's activations."""
    from uav_cache.distributed import Ranks
    from uav_train.trainer import TrainConfig, train

    stores = store.split(",") if store else ([f"stores/{donor}"] if donor else None)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    layer_names = split(layers)  # module paths or block indices; the store resolves indices to its paths
    over = dict(stores=stores, decoder=decoder, out=out, adapter=adapter, stage=stage, steps=steps,
                stage1_steps=stage1_steps, batch_size=batch_size, layers=layer_names, readout=readout, sources=split(sources), frozen_decoder=frozen_decoder, seed=seed, device=device,
                no_lora=no_lora or None, grad_checkpointing=grad_checkpointing or None, skip_corrupt=skip_corrupt or None)
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
