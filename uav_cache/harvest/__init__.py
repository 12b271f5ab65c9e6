"""The donor loop: run a donor once over a dataset and fill an activation store.

Hook points are explicit (TransformerLens style): a forward hook on each requested block (named by its
module path, e.g. ``model.layers.23``) captures that block's residual output, and the deepest hook stops
the forward pass, so layers above it and the LM head never run. Shards are written by a background
thread while the donor computes the next one, and committed one at a time (see store.py).

Under torchrun (``torchrun --nproc-per-node N -m uav_cache.harvest …``) each process runs the donor on its own
GPU over the shards it owns (shard s → rank s % N) and commits them on its own: a rank that dies costs only
its unfinished shard, and a re-run with any N finishes what is missing. Shard contents do not depend on N (each
shard is batched the same way), so the store is bit-identical to a one-process harvest.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from uav_cache import distributed
from uav_cache.device import cpu_threads, pick_device
from uav_cache.errors import UavError
from uav_cache.examples import ExampleSet, load_examples
from uav_cache.models import (DEVICE_MAPS, ModelSpec, block_modules, hidden_size, input_device, layer_name, load,
                              resolve,
                              tokenizer_fingerprint, weights_fingerprint)
from uav_cache.store import (CODECS, DEFAULT_CODEC, DEFAULT_READOUTS, FP16_MAX, READOUTS, STORAGE_DTYPES, StoreWriter,
                             new_meta, parse_positions, pool, to_bits, window_start)


@dataclass
class HarvestConfig:
    """What to harvest. Every field that changes the rows is part of the store's identity."""

    donor: str = "smollm2-135m"  # registry name (see `uav models`: uav_cache/registry/*.toml) or a local model folder
    data: str = "demo"  # built-in recipe name, a folder from `uav data build`, a JSONL file, or a hub dataset
    out: str = "stores/smollm2-135m"  # store folder (the CLI's default: stores/DONOR)
    layers: list[int] | None = None  # block indices to read, e.g. 15,20 (default: the registry's)
    # token vectors kept besides the pooled read-outs (store.POSITIONS): last (none), all (every token), window:W (W
    # consecutive tokens per text; bounds the store at W vectors per text and layer)
    positions: str = "last"
    # block indices whose token vectors are kept (default: every harvested layer); the others keep only read-outs:
    # a shallow block for the token itself, a deep one for its context, at a fraction of an all-layer store
    token_layers: list[int] | None = None
    # stored read-outs (store.READOUTS): last (last token), mean (mean over the tokens after the attention-sink
    # position 0)
    readouts: list[str] = field(default_factory=lambda: list(DEFAULT_READOUTS))
    dtype: str | None = None  # fp16 or bf16 (default: the registry's choice for this donor)
    batch_size: int = 8  # texts per forward pass
    limit: int | None = None  # use only the first N examples
    max_length: int | None = None  # token cap (default: the registry's); longer texts are cut and flagged
    donor_input: str = "raw"  # raw: the text as is; chat: wrapped as a user turn of the donor's chat template
    shard_rows: int = 4096  # rows per commit unit (and Zarr shard): a kill loses at most one shard of work
    chunk_rows: int = 512  # rows per inner chunk: the unit a streaming reader fetches
    # activation encoding (store.CODECS): raw (fastest writes and random reads) or zstd (7-22% smaller, for stores
    # shipped over a network)
    codec: str = DEFAULT_CODEC
    device: str = "auto"  # auto, cpu, cuda, cuda:1 …
    # auto | balanced | sequential: spread a donor too large for one GPU over every GPU of this node (transformers'
    # device_map over accelerate); one process per node, never under torchrun
    device_map: str | None = None
    trust_remote_code: bool = False  # allow the donor's own modelling code (off by default)
    # intra-op CPU threads per process (default: torch's; torchrun starts each process with 1); rows are bit-identical
    # between harvests with the same count, and within 1 ulp of the storage dtype across counts
    threads: int | None = None
    rank: int = field(default_factory=lambda: int(os.environ.get("RANK", 0)))  # torchrun sets these:
    world: int = field(default_factory=lambda: int(os.environ.get("WORLD_SIZE", 1)))  # shard s → rank s % world
    progress: bool = True


class _Stop(Exception):
    """Raised by the deepest hook: everything above the last requested block is skipped."""


def tokenize(tok, texts: list[str], max_length: int, donor_input: str) -> tuple[list[list[int]], list[bool]]:
    """Token ids per text, cut at ``max_length`` (the cut is recorded, never silent)."""
    ids, cut = [], []
    for t in texts:
        if donor_input == "chat":
            if not getattr(tok, "chat_template", None):
                raise UavError("--donor-input chat needs a donor tokenizer with a chat template",
                               "use --donor-input raw for this donor")
            full = tok.apply_chat_template([{"role": "user", "content": t}], tokenize=True)
            full = list(full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full)
        else:
            full = tok(t, add_special_tokens=True)["input_ids"]
        ids.append(list(full[:max_length]))
        cut.append(len(full) > max_length)
    return ids, cut


def char_spans(tok, text: str, ids: list[int], donor_input: str = "raw") -> list[tuple[int, int]]:
    """Where each token of ``ids`` sits in ``text``: character [begin, end), or (-1, -1) for a token that is not part
    of the text (BOS, chat-template tokens). Fast tokenizers report offsets; otherwise (or when the offsets do not
    describe these ids) each token's decoded piece is found in the text from left to right."""
    rendered, shift = text, 0
    if donor_input == "chat":
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
        shift = rendered.find(text)
    try:
        enc = tok(rendered, add_special_tokens=donor_input != "chat", return_offsets_mapping=True)
        if list(enc["input_ids"][:len(ids)]) != list(ids) or shift < 0:
            raise ValueError("offsets describe other ids")
        out = []
        for a, b in enc["offset_mapping"][:len(ids)]:
            a, b = a - shift, b - shift
            out.append((a, b) if 0 <= a < b <= len(text) else (-1, -1))
        return out
    except (NotImplementedError, ValueError, TypeError, KeyError):
        pass
    out, cursor = [], 0
    for i in ids:
        piece = tok.decode([i]).strip()
        at = text.find(piece, cursor) if piece else -1
        if at < 0 or at - cursor > 8:  # not in the text (a special token), or too far to be the next piece
            out.append((-1, -1))
            continue
        out.append((at, at + len(piece)))
        cursor = at + len(piece)
    return out


class NonFinite(UavError):
    """The donor's output holds a NaN or inf, or (``overflow``) values beyond what the store's fp16 holds: at
    ``layer``, first in text ``example`` at token ``position``."""

    def __init__(self, problem: str, fix: str, layer: str, example: str, position: int, overflow: bool = False):
        super().__init__(problem, fix)
        self.layer, self.example, self.position, self.overflow = layer, example, position, overflow


class Capture:
    """Forward hooks on chosen blocks; ``outputs[name]`` holds each block's residual output."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        blocks = dict(block_modules(model))
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        deepest = max(names, key=lambda n: list(blocks).index(n))
        for n in names:
            self.handles.append(blocks[n].register_forward_hook(self._hook(n, stop=(n == deepest))))

    def _hook(self, name: str, stop: bool):
        def hook(_mod, _inp, out):
            self.outputs[name] = out[0] if isinstance(out, (tuple, list)) else out
            if stop:
                raise _Stop
        return hook

    def run(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        self.outputs = {}
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
        return self.outputs

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _validate(ex: ExampleSet) -> None:
    if not ex.examples:
        raise UavError(f"dataset {ex.name!r} has no examples", "check --data and --limit")
    for e in ex.examples:
        if not isinstance(e.get("text"), str) or not e["text"].strip():
            raise UavError(f"example {e.get('id')!r} has an empty text", "drop it or give it text")


def plan_meta(cfg: HarvestConfig, spec: ModelSpec, model, tok, ex: ExampleSet, names: list[str],
              indices: list[int], dtype: str, max_length: int, n_tokens: int, compute_dtype: str = "fp32",
              token_names: list[str] | None = None) -> dict:
    """The store's root metadata: everything a reader needs to trust and use the rows without uav."""
    n = len(ex.examples)
    return new_meta(
        donor=spec.name,
        donor_hub_id=spec.hub_id,
        donor_revision=spec.revision,
        donor_kind=spec.kind,
        donor_path=spec.path,  # a local folder's absolute path (the name is only its basename); None otherwise
        family=spec.family,
        weights_fingerprint=weights_fingerprint(spec),
        n_layers=len(block_modules(model)),
        layers=names,
        layer_indices=indices,
        token_layers=[] if cfg.positions == "last" else (names if cfg.token_layers is None else token_names),
        positions=cfg.positions,
        readouts=list(cfg.readouts),
        readout={r: READOUTS[r] for r in cfg.readouts},
        dtype=dtype,
        compute_dtype=compute_dtype,  # bf16 (CUDA) and fp32 (CPU) rows must not mix in one store
        d_model=hidden_size(model),
        tokenizer=tokenizer_fingerprint(tok),
        donor_input=cfg.donor_input,
        max_length=max_length,
        dataset={"name": ex.name, "fingerprint": ex.fingerprint, "split_sizes": ex.split_sizes(), "n_examples": n},
        dataset_fingerprint=ex.fingerprint,
        n_rows=n,
        shard_rows=cfg.shard_rows,
        chunk_rows=cfg.chunk_rows,
        codec=cfg.codec,  # how the activation arrays are encoded; rows are the same either way, so not identity
        n_tokens=n_tokens,
    )


def harvest(cfg: HarvestConfig) -> Path:
    """Run ``cfg.donor`` over ``cfg.data`` and fill the store at ``cfg.out``. Re-running resumes; a finished
    store is a no-op. Returns the store path."""
    job = plan(cfg)
    # torchrun: a group only to wait for every rank before the store is finalized (ranks own disjoint shards and
    # need nothing else from each other): gloo, CPU-side even on GPUs, with a week-long timeout, since ranks that
    # finish early may wait long
    group = "MASTER_ADDR" in os.environ and distributed.init(job.ranks, job.device, timeout_s=7 * 24 * 3600,
                                                             backend="gloo")
    try:
        with cpu_threads(cfg.threads):
            job.run()
        distributed.barrier()
        if job.ranks.main or not group:
            job.writer.finalize()
    finally:
        distributed.finish(group)
    return Path(cfg.out)


@dataclass
class Job:
    """A planned harvest: the donor on this rank's device, every text tokenized, the store created or re-opened.
    :meth:`run` fills this rank's missing shards."""

    cfg: HarvestConfig
    writer: StoreWriter
    model: torch.nn.Module
    tok: Any
    ids: list[list[int]]  # token ids per row
    row_ids: list[str]  # example id per row (named in errors)
    names: list[str]  # hooked blocks' module paths
    dtype: str
    device: torch.device
    ranks: distributed.Ranks
    windows: list[tuple[int, int]] | None = None  # per row, the (start, count) of token positions whose vectors are kept
    token_names: list[str] | None = None  # layers that keep token vectors (None: every hooked layer)

    def run(self) -> None:
        """Run the donor over this rank's uncommitted shards, each written by a background thread while the next
        one computes (at most one in flight: bounded memory, errors surface promptly)."""
        cfg, writer = self.cfg, self.writer
        todo = writer.pending_shards(cfg.rank, cfg.world)
        if not todo:
            return
        capture = Capture(self.model, self.names)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        rank = f" [rank {cfg.rank}/{cfg.world}]" if cfg.world > 1 else ""
        bar = tqdm(total=sum(writer.shard_range(s)[1] - writer.shard_range(s)[0] for s in todo),
                   desc=f"harvest {writer.meta['donor']} → {cfg.out}{rank}", unit="text",
                   disable=not (cfg.progress and self.ranks.main))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uav-writer")
        pending: Future | None = None
        try:
            for s in todo:
                a, b = writer.shard_range(s)
                vecs, all_tok = forward_shard(self.model, capture, self.ids[a:b], self.names, pad, cfg.batch_size,
                                              self.dtype, self.windows[a:b] if self.windows else None, self.device,
                                              self.row_ids[a:b], bar, self.token_names)
                if pending is not None:
                    pending.result()
                pooled = {r: vecs[r] for r in cfg.readouts if r != "last"}
                pending = pool.submit(writer.write_shard, s, vecs["last"], all_tok, pooled)
            if pending is not None:
                pending.result()
        finally:
            pool.shutdown(wait=True)
            capture.close()
            bar.close()


def plan(cfg: HarvestConfig, loaded: tuple[torch.nn.Module, Any] | None = None) -> Job:
    """Check ``cfg``, load the donor (or use ``loaded``: a model and tokenizer already in memory, as a notebook or
    the bench has them), tokenize, and create or re-open the store (refusing one with another identity)."""
    parse_positions(cfg.positions)  # last, all or window:W
    if not cfg.readouts or any(r not in READOUTS for r in cfg.readouts) or "last" not in cfg.readouts \
            or len(set(cfg.readouts)) != len(cfg.readouts):
        raise UavError(f"--readouts {','.join(cfg.readouts)} is not a list of distinct read-outs that includes last",
                       f"use last plus any of: {', '.join(READOUTS)} (e.g. last,mean)")
    if cfg.codec not in CODECS:
        raise UavError(f"unknown --codec {cfg.codec!r}", f"use one of: {', '.join(CODECS)}")
    if cfg.donor_input not in ("raw", "chat"):
        raise UavError(f"unknown --donor-input {cfg.donor_input!r}", "use raw or chat")
    if cfg.batch_size < 1 or cfg.shard_rows < 1 or cfg.chunk_rows < 1:
        raise UavError("--batch-size, shard_rows and chunk_rows must be positive", "pass a number ≥ 1")
    if not 0 <= cfg.rank < cfg.world:
        raise UavError(f"rank {cfg.rank} is outside world size {cfg.world}", "check RANK / WORLD_SIZE")
    if cfg.max_length is not None and cfg.max_length < 1:  # -3 would cut 3 tokens off every text, 0 mean the default
        raise UavError(f"--max-length must be ≥ 1, got {cfg.max_length}", "e.g. --max-length 512, or leave it out")
    spec = resolve(cfg.donor)
    dtype = cfg.dtype or spec.dtype
    if dtype not in STORAGE_DTYPES:
        raise UavError(f"unknown --dtype {dtype!r}", "use fp16 or bf16")
    ex = load_examples(cfg.data, limit=cfg.limit)
    _validate(ex)

    ranks = distributed.Ranks(cfg.rank, cfg.world, distributed.Ranks.from_env().local_rank)
    check_device_map(cfg)
    if loaded is None:
        device = pick_device(cfg.device, ranks.device_rank)
        compute = "bf16" if device.type == "cuda" else "fp32"
        model, tok = load(spec, dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[compute],
                          device=str(device), trust_remote_code=cfg.trust_remote_code, device_map=cfg.device_map)
        device = input_device(model)
    else:
        (model, tok), p = loaded, next(loaded[0].parameters())
        device, compute = input_device(model), {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(p.dtype, "fp32")
    indices = list(cfg.layers) if cfg.layers else list(spec.layers)
    names = [layer_name(model, i) for i in indices]
    n_blocks = len(block_modules(model))
    indices = [i % n_blocks for i in indices]
    if len(set(names)) < len(names):
        raise UavError(f"--layers {','.join(map(str, cfg.layers or []))} names a block twice "
                       f"({', '.join(sorted({n for n in names if names.count(n) > 1}))})", "list each block once")
    max_length = cfg.max_length if cfg.max_length is not None else spec.max_length
    ids, cut = tokenize(tok, [e["text"] for e in ex.examples], max_length, cfg.donor_input)
    if any(len(t) == 0 for t in ids):
        bad = next(e["id"] for e, t in zip(ex.examples, ids) if not t)
        raise UavError(f"example {bad!r} tokenizes to nothing", "drop it or give it text")
    token_names = None
    if cfg.token_layers is not None:
        if cfg.positions == "last":
            raise UavError("--token-layers chooses which layers keep token vectors, and --positions last keeps none",
                           "add --positions all or --positions window:W, or drop --token-layers")
        token_names = [layer_name(model, i) for i in cfg.token_layers]
        stray = [n for n in token_names if n not in names]
        if stray:
            raise UavError(f"--token-layers {','.join(map(str, cfg.token_layers))} names blocks not harvested "
                           f"({', '.join(stray)})", "list them in --layers too")
    meta = plan_meta(cfg, spec, model, tok, ex, names, indices, dtype, max_length, sum(map(len, ids)), compute,
                     token_names)
    spans = [char_spans(tok, e["text"], t, cfg.donor_input) for e, t in zip(ex.examples, ids)]
    writer = StoreWriter.create_or_open(cfg.out, meta, ex.examples, ids, cut, spans)
    n_sink = sum(len(t) == 1 for t in ids)
    if n_sink and cfg.progress and ranks.main:
        tqdm.write(f"note: {n_sink} text(s) are a single token: every read-out of them is position 0, the attention "
                   "sink (`uav store info` counts them; a longer text, or --donor-input chat, avoids it)")
    width = parse_positions(cfg.positions)
    windows = [(window_start(e["id"], len(t), width), len(t) if width is None else min(len(t), width))
               for e, t in zip(ex.examples, ids)] if width != 0 else None
    return Job(cfg, writer, model, tok, ids, [e["id"] for e in ex.examples], names, dtype, device, ranks, windows,
               writer.meta["token_layers"] if "token_layers" in writer.meta else None)


def check_device_map(cfg: HarvestConfig) -> None:
    """A donor spread over a node's GPUs is one process driving them all: torchrun's one process per GPU would
    load it N times over the same GPUs."""
    if cfg.device_map is None:
        return
    if cfg.device_map not in DEVICE_MAPS:
        raise UavError(f"unknown --device-map {cfg.device_map!r}", f"use one of: {', '.join(DEVICE_MAPS)}")
    if cfg.world > 1:
        raise UavError(f"--device-map spreads one donor over this node's GPUs from one process; it cannot run as "
                       f"{cfg.world} torchrun processes", "start `uav harvest --device-map auto` once per node, "
                       "without torchrun (or drop --device-map to run one donor copy per GPU)")
    if cfg.device not in ("auto", "cuda"):
        raise UavError(f"--device-map places the donor itself; --device {cfg.device} would contradict it",
                       "leave --device auto (choose the GPUs with CUDA_VISIBLE_DEVICES)")


@torch.inference_mode()
def forward_shard(model, capture: Capture, ids: list[list[int]], names: list[str], pad: int, batch_size: int,
                  dtype: str, windows: list[tuple[int, int]] | None, device: torch.device, ex_ids: list[str],
                  bar, token_names: list[str] | None = None) -> tuple[dict, dict | None]:
    """Forward one shard in length-sorted batches (less padding); rows come back in their original order.
    Returns ``{readout: {layer: (rows, d) bits}}`` for every read-out in store.READOUTS, and the bits of the token
    vectors each row keeps (``windows[i]`` = (start, count) of row i's kept positions; None: none kept)."""
    keep_all = windows is not None
    n = len(ids)
    d = None
    vecs: dict[str, dict[str, np.ndarray]] = {r: {} for r in READOUTS}
    keep = names if token_names is None else token_names
    per_row: dict[str, list[np.ndarray | None]] = {k: [None] * n for k in keep} if keep_all else {}
    order = sorted(range(n), key=lambda i: (len(ids[i]), i))
    for k in range(0, n, batch_size):
        rows = order[k:k + batch_size]
        width = max(len(ids[i]) for i in rows)
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            x[j, :len(ids[i])] = torch.tensor(ids[i])
            mask[j, :len(ids[i])] = 1
        out = capture.run(model, x.to(device), mask.to(device))
        for name in names:
            h = out[name].float()
            if d is None:
                d = h.shape[-1]
            real = mask.to(h.device).bool()
            bad = (~torch.isfinite(h)).any(-1) & real
            if bad.any():
                j, p = (int(x) for x in bad.nonzero()[0])
                texts = [ex_ids[rows[i]] for i in range(len(rows)) if bad[i].any()]
                raise NonFinite(f"donor produced NaN/inf at {name} for {texts[:3]} (first at position {p} of "
                                f"{ex_ids[rows[j]]})", "check the donor weights/dtype", name, ex_ids[rows[j]], p)
            peak = float(h[real].abs().max())
            if dtype == "fp16" and peak > FP16_MAX:
                j, p = (int(x) for x in ((h.abs() > FP16_MAX).any(-1) & real).nonzero()[0])
                raise NonFinite(f"activations at {name} reach {peak:.3g}, beyond fp16's {FP16_MAX:.0f} (first at "
                                f"position {p} of {ex_ids[rows[j]]})",
                                "re-run with --dtype bf16 (use a new --out: the store's dtype is fixed)", name,
                                ex_ids[rows[j]], p, overflow=True)
            for r in vecs:
                if name not in vecs[r]:
                    vecs[r][name] = np.zeros((n, d), dtype=np.uint16)
                vecs[r][name][rows] = to_bits(pool(h, real, r), dtype)
            if keep_all and name in per_row:
                for j, i in enumerate(rows):
                    a, c = windows[i]
                    per_row[name][i] = to_bits(h[j, a:a + c], dtype)
        bar.update(len(rows))
    all_tok = {k: np.concatenate(v) for k, v in per_row.items()} if keep_all else None
    return vecs, all_tok



@dataclass
class Reading:
    """What the donor holds for one text, read in memory exactly as a harvest stores it: the pooled read-outs per
    layer, and (when asked for) every token's vector per layer with the token's characters in the text."""

    pooled: dict[str, dict[str, torch.Tensor]]  # readout → layer → (d,)
    tokens: dict[str, torch.Tensor] | None  # layer → (n_tokens, d), when keep_tokens
    ids: list[int]
    spans: list[tuple[int, int]]


def read_out(model, tok, texts: list[str], names: list[str], *, dtype: str, max_length: int, donor_input: str = "raw",
             batch_size: int = 8, keep_tokens: bool = False) -> list[Reading]:
    """Activations for a few texts through exactly the harvest path (same cut, same rounding), in memory: what
    `uav explain` and the Verbalizer show the decoder, so it sees what it saw in training."""
    from uav_cache.store import from_bits

    ids, _ = tokenize(tok, texts, max_length, donor_input)
    capture = Capture(model, names)
    device = next(model.parameters()).device
    windows = [(0, len(t)) for t in ids] if keep_tokens else None
    try:
        with tqdm(total=len(texts), disable=True) as bar:
            vecs, toks = forward_shard(model, capture, ids, names, tok.pad_token_id or 0, batch_size, dtype, windows,
                                       device, [str(i) for i in range(len(texts))], bar)
    finally:
        capture.close()
    out, off = [], np.concatenate([[0], np.cumsum([len(t) for t in ids])])
    for i, (text, t) in enumerate(zip(texts, ids)):
        pooled = {r: {n: from_bits(vecs[r][n][i:i + 1], dtype)[0] for n in names} for r in READOUTS}
        tokens = {n: from_bits(toks[n][off[i]:off[i + 1]], dtype) for n in names} if keep_tokens else None
        out.append(Reading(pooled, tokens, t, char_spans(tok, text, t, donor_input)))
    return out
