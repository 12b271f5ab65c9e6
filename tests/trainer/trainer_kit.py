"""Plain helpers of the trainer tests: the standard tiny config, a spy on each stage's start, the logged metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uav_cache.harvest import HarvestConfig, harvest
from uav_train.trainer import TrainConfig, Trainer, train

LABELS = ["red", "green", "blue"]
MLP = {"k": 2, "hidden": 32}
QFORMER = {"k": 4, "n_ctx": 2, "layers": 1, "heads": 2}


def split_of(i: int) -> str:
    return "train" if i % 6 < 4 else ("val" if i % 6 == 4 else "test")  # interleaved: chunks mix splits


def harvest_store(donor: Path, data: Path, out: Path, **kw) -> str:
    harvest(HarvestConfig(donor=str(donor), data=str(data), out=str(out), shard_rows=16, chunk_rows=8,
                          progress=False, **{"layers": [1], **kw}))
    return str(out)


def cfg_for(st: dict[str, str], decoder, out, **kw) -> TrainConfig:
    """The small standard run on store A (llama donor, layer 1); keyword arguments override fields."""
    base = dict(stores=[st["a"]], out=str(out), decoder=str(decoder), adapter="mlp", adapter_options=dict(MLP),
                stage1_steps=3, steps=4, batch_size=4, eval_every=2, val_items=8, checkpoint_every=1,
                progress=False)
    return TrainConfig(**{**base, **kw})


def train_spy(cfg: TrainConfig, on_step=None) -> dict:
    """Train, recording the adapter weights and the trainable decoder parameters at the start of each stage."""
    seen: dict = {}
    orig = Trainer._stage

    def spy(self, stage, steps):
        seen[stage] = {"adapter": {k: v.detach().clone() for k, v in self.adapter.state_dict().items()},
                       "decoder_trainable": sorted(n for n, p in self.model.named_parameters() if p.requires_grad)}
        return orig(self, stage, steps)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_stage", spy)
        train(cfg, on_step=on_step)
    return seen


def all_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def metrics(run: Path) -> list[dict]:
    """Training-step rows (the step-0 rows hold only the baseline validation loss)."""
    return [r for r in all_metrics(run) if "loss" in r]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
