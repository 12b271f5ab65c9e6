"""What a training step will cost, checked before the first one: the training split's size and the step's memory.

A batch larger than one pass over the training split only repeats items within the step, and a batch too large for
the machine is killed by the kernel hours later, leaving a run stuck in status "training". Both are refused here, in
one line, before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from uav_cache.errors import UavError
from uav_cache.models import ModelSpec
from uav_cache.store import Store
from uav_train.stream import item_pairs

if TYPE_CHECKING:
    from uav_train.trainer.config import TrainConfig

TEMPLATE_TOKENS = 48  # chat template and question tokens per item, a generous round figure (the demo's: ~25-40)
DEFAULT_VOCAB = 65_536  # when the decoder's config does not say


def epoch_items(stores: list[Store], mode: str, sources: list[str] | None = None,
                weights: dict[str, float] | None = None, context: float = 0.0) -> float:
    """Items one epoch of the training split yields (``mode`` "qa": one per question plus ``context`` self-supervised
    items per text, "text": one per row, "context": ``context`` per row, at least 1), with the source weights applied
    as the stream applies them (their expected count)."""
    n = 0.0
    for st in stores:
        rows = st.split_rows("train")
        if sources:
            rows = rows[np.isin(st.column("source")[rows], list(sources))]
        if len(rows) == 0:
            continue
        recs = st.records(int(rows.min()), int(rows.max()) + 1)
        for r in rows.tolist():
            e = recs[r - int(rows.min())]
            per = {"qa": len(item_pairs(e, "qa")) + context, "text": 1, "context": max(context, 1.0)}[mode]
            n += per * (weights or {}).get(e.get("source") or "", 1)
    return n


def check_batch(batch_size: int, items: float, stage: str) -> None:
    """Refuse a batch larger than the training split (an empty split is the stream's to refuse)."""
    if items >= 1 and batch_size > items:
        most = int(items)
        raise UavError(f"batch_size {batch_size} is larger than the training split ({most} item(s) per epoch for "
                       f"{stage})", f"use --batch-size {most} or less, or harvest more training data")


def step_bytes(batch_size: int, spec: ModelSpec, *, soft_tokens: int, answer_tokens: int, d_in: int, n_inputs: int,
               grad_checkpointing: bool, vocab: int) -> int:
    """An upper estimate of one training step's memory beyond the weights: the decoder's activations kept for the
    backward pass (fp32: ~70 bytes per token, layer and width unit without checkpointing, one layer input with it;
    after Korthikanti et al. 2022), the answer logits with their gradient, and the adapter's inputs."""
    tokens = soft_tokens + TEMPLATE_TOKENS + answer_tokens
    per_layer = (8 if grad_checkpointing else 70) * tokens * spec.d_model
    logits = 3 * 4 * answer_tokens * vocab
    inputs = 4 * n_inputs * d_in
    return int(batch_size * (spec.n_layers * per_layer + logits + inputs))


def available_bytes(device: str) -> int | None:
    """Free memory of the device the step runs on: the GPU's free memory, else the host's MemAvailable."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def vocab_size(spec: ModelSpec) -> int:
    """The decoder's vocabulary from its config.json when the folder is known, else a round default."""
    if spec.path:
        try:
            cfg = json.loads((Path(spec.path) / "config.json").read_text())
            return int(cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size") or DEFAULT_VOCAB)
        except (OSError, ValueError, TypeError):
            pass
    return int(spec.extra.get("vocab_size", DEFAULT_VOCAB))


def check_memory(need: int, free: int | None, batch_size: int) -> None:
    """Refuse a step estimated to need more memory than is free (nothing is known: nothing is refused)."""
    if free is not None and need > free:
        raise UavError(f"one training step of batch_size {batch_size} needs about {need / 2**30:.1f} GiB (estimated), "
                       f"more than the {free / 2**30:.1f} GiB free", "lower --batch-size, or pass --grad-checkpointing")


def preflight(cfg: "TrainConfig", stores: list[Store], device: str) -> int:
    """Both checks for every stage the run trains, before anything is written; returns the step estimate (bytes)."""
    from uav_cache.models import resolve
    from uav_train.adapters import adapter_config

    stage1 = "context" if cfg.stage1_task == "context" else "text"
    stages = {"1": [(stage1, "stage 1")], "2": [("qa", "stage 2")], "both": [(stage1, "stage 1"), ("qa", "stage 2")]}
    for mode, name in stages[cfg.stage]:
        check_batch(cfg.batch_size, epoch_items(stores, mode, cfg.sources, cfg.source_weights, cfg.context), name)
    spec = resolve(cfg.decoder, "--decoder")
    layers = len(cfg.layers or stores[0].layers) if cfg.adapter != "none" else 0
    soft = getattr(adapter_config(cfg.adapter, **cfg.adapter_options), "k", layers) if layers else 0
    vectors = 0
    if cfg.token_layers:  # every stored token of the longest text may be shown (the "full" and "tokens" forms)
        longest = int(stores[0].column("n_tokens").max())
        tc = adapter_config(cfg.token_adapter, **cfg.token_adapter_options)
        vectors = len(cfg.token_layers) * longest
        soft += getattr(tc, "k", None) or getattr(tc, "m", 1) * longest
    need = max(step_bytes(cfg.batch_size, spec, soft_tokens=soft, answer_tokens=answer,
                          d_in=stores[0].meta["d_model"], n_inputs=layers + vectors,
                          grad_checkpointing=cfg.grad_checkpointing, vocab=vocab_size(spec))
               for answer in (cfg.max_target_tokens, cfg.max_answer_tokens or 32))
    check_memory(need, available_bytes(device), cfg.batch_size)
    return need
