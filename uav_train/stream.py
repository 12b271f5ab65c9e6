"""Store → training items, streamed: memory stays flat however large the store is.

Reads whole inner chunks of committed shards (``Store.chunk_spans``), in an order shuffled per epoch, through a
bounded shuffle buffer, produced by a background thread. The order depends only on (seed, epoch), so a resumed
run skips exactly the items it has consumed.

Data parallelism: every rank draws the same global order and keeps its own slice of each global batch (rank r
of N takes items r, r+N, …). N processes thus see exactly the batches one process would, which is what lets a
DDP run reproduce a one-process run; the price is that each rank reads every chunk, one vector per item (small
next to a decoder step).
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from uav_cache.errors import UavError
from uav_cache.store import Store, UnreadableChunk
from uav_train.prompt import STAGE1_QUESTION


@dataclass
class Item:
    x: torch.Tensor  # (tokens, layers, d_in) float32
    question: str
    answer: str
    row: int
    store: int
    task: str
    source: str
    text: str


def item_pairs(example: dict, mode: str) -> list[tuple[str, str]]:
    """(question, answer) pairs one example yields: its qa list (stage 2) or the text itself (stage 1)."""
    if mode == "text":
        return [(STAGE1_QUESTION, example["text"])]
    return [(q["question"], q["answer"]) for q in example.get("qa", [])]


def read_x(store: Store, layers: list[str], rows: np.ndarray, tokens: bool, readout: str = "last") -> list[torch.Tensor]:
    """Activations of ``rows`` as float32 (tokens, layers, d) tensors, reading contiguous runs at once: every
    token (``tokens``) or one stored read-out per layer (store.READOUTS)."""
    if tokens:
        return [torch.stack([store.read_tokens(layer, int(r)) for layer in layers], 1).float() for r in rows]
    if len(rows) == 0:
        return []
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = torch.stack([store.read(layer, lo, hi, readout) for layer in layers], 1).float()  # (hi-lo, L, d)
    # clone: a view would keep the whole chunk alive while any one of its rows sits in the shuffle buffer
    return [block[int(r) - lo].unsqueeze(0).clone() for r in rows]


class ItemStream:
    """An endless, deterministic, shuffled stream of :class:`Item` over one split of one or more stores."""

    def __init__(self, stores: list[Store], split: str, *, layers: list[str] | None = None, mode: str = "qa",
                 seed: int = 0, shuffle_buffer: int = 1024, tokens: bool = False, rank: int = 0, world: int = 1,
                 prefetch: int = 512, epochs: int | None = None, skip_corrupt: bool = False, readout: str = "last",
                 sources: list[str] | None = None, weights: dict[str, float] | None = None):
        self.stores, self.split, self.mode, self.readout = stores, split, mode, readout
        self.sources = set(sources) if sources else None  # only rows of these sources (None: every source)
        # source → expected copies of each of its items per epoch (default 1): 3 = three times, 0.5 = half of them
        self.weights = dict(weights or {})
        bad = {k: v for k, v in self.weights.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0}
        if bad:
            raise UavError(f"source weights must be numbers > 0, got {bad}", "e.g. source_weights = {bbc_topic = 3}")
        self.layers = layers or stores[0].layers
        self.seed, self.buffer, self.tokens = seed, shuffle_buffer, tokens
        self.rank, self.world, self.prefetch, self.epochs = rank, world, prefetch, epochs
        self.bad = 0  # items skipped for NaN/inf activations
        self.skip_corrupt = skip_corrupt  # unreadable chunks: skip (counted, warned) instead of refusing
        self.corrupt: set[int] = set()  # indices (into self.chunks) of chunks skipped as unreadable
        self.seen = 0
        self.chunks = self._chunks()
        if not self.chunks:
            only = f" of sources {sorted(self.sources)}" if self.sources else ""
            raise UavError(f"split {split!r} has no committed rows{only} with {mode} items in "
                           f"{', '.join(s.path for s in stores)}",
                           "check the sources setting" if only else _empty_split_fix(stores, split))

    def _chunks(self) -> list[tuple[int, np.ndarray]]:
        out = []
        for si, st in enumerate(self.stores):
            keep = st.column("split") == self.split
            if self.sources is not None:
                keep &= np.isin(st.column("source"), list(self.sources))
            for lo, hi in st.chunk_spans():
                rows = np.arange(lo, hi)
                rows = rows[keep[rows]]
                if self.mode != "text" and len(rows):  # stage 2 needs qa pairs; records are read per chunk
                    recs = st.records(lo, hi)
                    rows = rows[[bool(item_pairs(recs[r - lo], self.mode)) for r in rows]]
                if len(rows):
                    out.append((si, rows))
        return out

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            epoch = 0
            while self.epochs is None or epoch < self.epochs:
                rng = np.random.default_rng([self.seed, epoch])
                buf: list[Item] = []
                for ci in rng.permutation(len(self.chunks)):
                    si, rows = self.chunks[ci]
                    st = self.stores[si]
                    lo = int(rows.min())
                    recs = st.records(lo, int(rows.max()) + 1)  # this chunk's records only: memory stays flat
                    try:
                        xs = read_x(st, self.layers, rows, self.tokens, self.readout)
                    except Exception as e:  # a garbled/truncated chunk surfaces as a codec, key or OS error
                        if isinstance(e, UavError) and not isinstance(e, UnreadableChunk):  # a missing file: ours
                            raise
                        self._unreadable(int(ci), st, rows, e)
                        continue
                    for r, x in zip(rows, xs):
                        e = recs[r - lo]
                        for q, a in item_pairs(e, self.mode):
                            it = Item(x, q, a, int(r), si, e.get("task") or "", e.get("source") or "", e["text"])
                            w = self.weights.get(it.source, 1)
                            buf.extend([it] * (int(w) + bool(w % 1 and rng.random() < w % 1)))
                    while len(buf) > self.buffer:
                        item = buf.pop(int(rng.integers(len(buf))))
                        if not self._put(out, item, stop):
                            return
                rng.shuffle(buf)
                for item in buf:
                    if not self._put(out, item, stop):
                        return
                epoch += 1
                if len(self.corrupt) == len(self.chunks):
                    raise UavError(f"every chunk of split {self.split!r} is unreadable", "run `uav store verify` on the store(s)")
            out.put(None)
        except BaseException as e:  # surface reader errors in the consumer, not as a silent hang
            out.put(e)

    def _unreadable(self, ci: int, st: Store, rows: np.ndarray, err: Exception) -> None:
        """Refuse with the store and shard named, or (skip_corrupt) count the chunk and warn once."""
        s = st.shard_of(int(rows[0]))
        where = f"rows {int(rows.min())}-{int(rows.max())} (shard {s}) of store {st.path}"
        if not self.skip_corrupt:
            raise UavError(f"cannot read {where}: {type(err).__name__}: {err}",
                           f"run `uav store verify {st.path}`; re-harvest the shard (delete _commits/s{s:05d}.json, "
                           "re-run the harvest) or pass --skip-corrupt to train without it") from err
        if ci not in self.corrupt:
            self.corrupt.add(ci)
            warnings.warn(f"skipping unreadable {where}: {type(err).__name__}: {err}", stacklevel=2)

    @staticmethod
    def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Item]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        t = threading.Thread(target=self._produce, args=(q, stop), daemon=True, name="uav-stream")
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if not torch.isfinite(item.x).all():
                    self.bad += 1
                    warnings.warn(f"skipping row {item.row} of {self.stores[item.store].path}: NaN/inf activations")
                    continue
                self.seen += 1
                yield item
        finally:
            stop.set()

    def batches(self, batch_size: int, skip: int = 0) -> Iterator[list[Item]]:
        """This rank's part of each global batch of ``batch_size`` items (all of it for one process); the first
        ``skip`` items of the global stream are dropped (resuming a run mid-stream)."""
        it = iter(self)
        for _ in range(skip):
            next(it)
        while True:
            batch = [item for _, item in zip(range(batch_size), it)]
            if not batch:
                return
            yield batch[self.rank::self.world]


def _empty_split_fix(stores: list[Store], split: str) -> str:
    """Why a split yields no items, as a fix: its rows exist but carry no qa pairs, are not committed yet, or it has none."""
    if any(len(st.split_rows(split)) for st in stores):
        return "give the split's examples qa pairs (question and answer), or train stage 1 only (--stage 1)"
    if any((st.column("split") == split).any() for st in stores):
        return "its rows are in shards not committed yet: finish the harvest (re-run the same command)"
    return "harvest a dataset that has this split"


def derangement(items: list[Item], seed: int = 0) -> list[int]:
    """For each item, the index of another item of the same source whose activation it will be shown: the
    *shuffled* reference (same prompt, someone else's activation). Fixed by ``seed``; never the item's own row
    where the source has two rows or more (a one-row source keeps its own: there is nothing to swap with)."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_source.setdefault(it.source, []).append(i)
    out = list(range(len(items)))
    for idx in by_source.values():
        rows = sorted({items[i].row for i in idx})
        if len(rows) < 2:
            continue
        # a cyclic shift of a shuffled row order moves every row to another row: a derangement of rows
        order = [rows[j] for j in rng.permutation(len(rows))]
        to = {order[j]: order[(j + 1) % len(order)] for j in range(len(order))}
        first_of = {}
        for i in idx:
            first_of.setdefault(items[i].row, i)
        for i in idx:
            out[i] = first_of[to[items[i].row]]
    return out


def stack_x(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the token axis: (B, S, L, d) activations and a (B, S) mask."""
    s = max(i.x.shape[0] for i in items)
    b, (_, l, d) = len(items), items[0].x.shape
    x = torch.zeros(b, s, l, d)
    mask = torch.zeros(b, s, dtype=torch.bool)
    for j, it in enumerate(items):
        x[j, : it.x.shape[0]] = it.x
        mask[j, : it.x.shape[0]] = True
    return x, mask
