"""What a training step will cost: the memory model of one step on the decoder's side (`uav plan` prints it), and the
checks before the first step, the training split's size and the step's memory.

A batch larger than one pass over the training split only repeats items within the step, and a batch too large for
the machine is killed by the kernel hours later, leaving a run stuck in status "training". Both are refused here, in
one line, before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from uav_cache.arch import Arch, arch_of
from uav_cache.device import resolve_precision
from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_train.stream import item_pairs

if TYPE_CHECKING:
    from uav_train.trainer.config import TrainConfig

TEMPLATE_TOKENS = 48  # chat template and question tokens per item, a generous round figure (the demo's: ~25-40)


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


# ---------------------------------------------------------------------------------------------- the memory model
# One training step's memory on the decoder's side, per process: `uav plan` prints it with its assumptions, and
# preflight() refuses a step that would not fit. tests/test_plan.py holds it against a real training's peak memory.


def frozen_bytes(dec: Arch, precision: str, nproc: int = 1, fsdp: bool = False) -> float:
    """The frozen decoder weights one process holds, in the precision's dtype: all of them, or with FSDP2 over
    ``nproc`` ranks 1/nproc of the blocks plus two gathered blocks (embeddings, final norm and LM head stay whole)."""
    wbytes = 2 if precision == "bf16" else 4
    blocks, other = dec.n_layers * dec.block_params * wbytes, dec.other_params * wbytes
    return (blocks / nproc + 2 * dec.block_params * wbytes + other) if fsdp else (blocks + other)


def lora_params(dec: Arch, r: int) -> int:
    """Trainable parameters of a rank-``r`` LoRA on every Linear of every block."""
    return dec.n_layers * sum(r * (i + o) for i, o in dec.linears_per_block())


def trainable_bytes(params: int) -> int:
    """Adapter and LoRA weights in fp32 with fp32 gradients and AdamW's two moments: 16 bytes a parameter."""
    return 16 * params


def step_bytes(dec: Arch, *, items: int, seq: int, answer_tokens: int, precision: str,
               grad_checkpointing: bool) -> dict[str, int]:
    """What one step of ``items`` items of ``seq`` tokens each keeps beyond the weights: the activations kept for the
    backward pass (2 bytes × (10·d + 4·intermediate) a token and block, twice that in fp32; with checkpointing, each
    block's input and one block's worth), and the logits of the ``answer_tokens`` an item the LM head runs on, with
    their gradient (fp32)."""
    wbytes = 2 if precision == "bf16" else 4
    per_tok_block = 2 * (10 * dec.d_model + 4 * dec.intermediate) * (1 if precision == "bf16" else 2)
    if grad_checkpointing:
        acts = items * seq * (dec.n_layers * dec.d_model * wbytes + per_tok_block)
    else:
        acts = items * seq * dec.n_layers * per_tok_block
    return {"activations": acts, "logits": items * answer_tokens * dec.vocab * 4 * 3}


def available_bytes(device: str) -> int | None:
    """Free memory of the device the step runs on: the GPU's free memory, else the host's MemAvailable."""
    if device.startswith("cuda"):
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


def check_memory(need: int, free: int | None, batch_size: int) -> None:
    """Refuse a step estimated to need more memory than is free (nothing is known: nothing is refused)."""
    if free is not None and need > free:
        raise UavError(f"one training step of batch_size {batch_size} needs about {need / 2**30:.1f} GiB (estimated), "
                       f"more than the {free / 2**30:.1f} GiB free", "lower --batch-size, or pass --grad-checkpointing")


def preflight(cfg: "TrainConfig", stores: list[Store], device: str) -> int | None:
    """Both checks for every stage the run trains, before anything is written; returns the step estimate (bytes), None
    where the decoder's sizes are unknown (nothing to estimate from, so nothing is refused)."""
    from uav_cache.models import resolve
    from uav_train.adapters import adapter_config

    stage1 = "context" if cfg.stage1_task == "context" else "text"
    stages = {"1": [(stage1, "stage 1")], "2": [("qa", "stage 2")], "both": [(stage1, "stage 1"), ("qa", "stage 2")]}
    for mode, name in stages[cfg.stage]:
        check_batch(cfg.batch_size, epoch_items(stores, mode, cfg.sources, cfg.source_weights, cfg.context), name)
    spec = resolve(cfg.decoder, "--decoder")
    try:
        dec = arch_of(spec, exact=False)
    except UavError:  # a registry entry without [arch] sizes, a folder whose config.json lacks one
        return None
    layers = len(cfg.layers or stores[0].layers) if cfg.adapter != "none" else 0
    soft = getattr(adapter_config(cfg.adapter, **cfg.adapter_options), "k", layers) if layers else 0
    vectors = 0
    if cfg.token_layers:  # every stored token of the longest text may be shown (the "full" and "tokens" forms)
        longest = int(stores[0].column("n_tokens").max())
        tc = adapter_config(cfg.token_adapter, **cfg.token_adapter_options)
        vectors = len(cfg.token_layers) * longest
        soft += getattr(tc, "k", None) or getattr(tc, "m", 1) * longest
    precision = resolve_precision(cfg.precision, torch.device(device))
    inputs = cfg.batch_size * 4 * (layers + vectors) * stores[0].meta["d_model"]  # the adapter's input vectors, fp32
    need = max(sum(step_bytes(dec, items=cfg.batch_size, seq=soft + TEMPLATE_TOKENS + answer, answer_tokens=answer,
                              precision=precision, grad_checkpointing=cfg.grad_checkpointing).values()) + inputs
               for answer in (cfg.max_target_tokens, cfg.max_answer_tokens or 32))
    check_memory(need, available_bytes(device), cfg.batch_size)
    return need
