"""Store → training items, streamed: memory stays flat however large the store is; and what each item shows the
adapter (:class:`Acts`): a pooled read-out, one token's vectors, a window of consecutive tokens, or all of a text's
stored tokens with or without its read-out (:data:`FORMS`), drawn per item in training.

A *view* shows the positions from a point of the text on (:meth:`RowActs.view`): their token vectors, computed in
context, and a read-out pooled over those positions only, from the stored token vectors of the pooled layers by the
harvest's own pooling. An example's ``shown_from`` places it; training also places one after the last mention of an
item's answer (:func:`answer_end`), so the question asks about what lies outside the positions shown.

Self-supervised items need no labels (:func:`context_item`): from a window of token vectors, the decoder is asked
for the window's own text, or the text just before or just after it (UAV's stage 1, Rep2Text's objective and
Activation Oracles' context prediction in one). They come from any text with stored token vectors.

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
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from uav_cache.errors import UavError
from uav_cache.store import Store, UnreadableChunk, pool, view_index
from uav_train.adapters import AdapterInput
from uav_train.prompt import STAGE1_QUESTION


FORMS = {
    "pooled": "the stored read-out of each pooled layer",
    "tokens": "every stored token vector of the text",
    "full": "the read-out and every stored token vector",
    "window": "a window of consecutive stored tokens, its length drawn from the window range",
    "token": "one stored token's vectors",
}


def default_form(pooled: bool, tokens: bool) -> str:
    """The form a run shows its QA items when its settings name none, and every evaluation item: everything it reads
    about the whole text (the read-out and every stored token, or the one of them it reads)."""
    return "full" if pooled and tokens else ("tokens" if tokens else "pooled")


CONTEXT = {  # self-supervised questions: which text a window of token vectors is asked for
    "own": ("What do these tokens say?", "Repeat the text these activations encode.", "Which words are these?"),
    "before": ("What text comes right before this?", "What was written just before these words?",
               "Which words precede this passage?"),
    "after": ("What text comes right after this?", "How does the text continue after these words?",
              "Which words follow this passage?"),
}
CONTEXT_WORDS = 12  # before/after targets: at most this many words next to the window


@dataclass(frozen=True)
class InputSpec:
    """What a run feeds its adapter: the pooled read-out of ``layers`` (``readout``, or several joined by "+":
    "mean+last"; None: no pooled branch) and/or the token vectors of ``token_layers``; QA items are shown one of
    ``forms`` (weights), windows are drawn with a length in ``window``. With ``views`` the token vectors of the pooled
    layers are read too, so an item can be shown a view (a read-out pooled over its positions only). The run records
    it; evaluation shows every item :meth:`eval_form`."""

    layers: tuple[str, ...] = ()
    readout: str | None = "last"
    token_layers: tuple[str, ...] = ()
    forms: tuple[tuple[str, float], ...] = (("pooled", 1.0),)
    window: tuple[int, int] = (1, 32)
    views: bool = False

    @property
    def pooled(self) -> bool:
        return self.readout is not None and bool(self.layers)

    @property
    def readouts(self) -> tuple[str, ...]:
        """The read-outs the pooled branch reads of each layer, in order: the adapter sees layers × read-outs."""
        return tuple(self.readout.split("+")) if self.readout else ()

    @property
    def tokens(self) -> bool:
        return bool(self.token_layers)

    def eval_form(self) -> str:
        """The form every evaluation item is shown: everything the run reads about the whole text."""
        return default_form(self.pooled, self.tokens)


@dataclass
class Acts:
    """What one item shows the adapter: ``pooled`` (layers, d) read-outs and/or ``tokens`` (S, token layers, d)
    vectors of the token positions ``positions`` (S,) of its text."""

    pooled: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    positions: np.ndarray | None = None

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in (self.pooled, self.tokens) if t is not None)


@dataclass
class RowActs:
    """Everything a store holds for one row that a run reads: read-outs, token vectors with their positions, and
    each token's characters in the text (for self-supervised targets; None when not needed)."""

    pooled: torch.Tensor | None
    tokens: torch.Tensor | None
    positions: np.ndarray | None
    spans: np.ndarray | None = None
    deep: torch.Tensor | None = None  # (S, pooled layers, d): the pooled layers' token vectors, for views
    readouts: tuple[str, ...] = ()  # the pooled branch's read-outs (a view pools its positions the same way)

    def view(self, first_char: int) -> Acts | None:
        """The positions whose token begins at ``first_char`` or later: their token vectors in context, and each
        pooled layer's read-outs pooled over them only (None when no stored token lies there). Position 0, the
        attention sink, is never in a view (a view starts after a character of the text)."""
        idx = view_index(self.spans, self.positions, first_char)
        if not len(idx):
            return None
        tokens = self.tokens[idx] if self.tokens is not None else None
        return Acts(self.pooled_over(idx), tokens, self.positions[idx])

    def pooled_over(self, idx: np.ndarray) -> torch.Tensor | None:
        """Each pooled layer's read-outs pooled over the stored positions ``idx`` only, by the harvest's pooling
        (None without the pooled layers' token vectors)."""
        if self.deep is None:
            return None
        mask = torch.zeros(1, len(self.positions), dtype=torch.bool)
        mask[0, idx] = True
        return torch.stack([pool(self.deep[None, :, j].float(), mask, r)[0].to(self.deep.dtype)
                            for j in range(self.deep.shape[1]) for r in self.readouts])

    def form(self, form: str, rng: np.random.Generator | None = None, window: tuple[int, int] = (1, 32)) -> Acts:
        """The Acts of one form (:data:`FORMS`); windows and single tokens are drawn with ``rng``."""
        if form == "pooled":
            return Acts(self.pooled)
        if form in ("tokens", "full"):
            return Acts(self.pooled if form == "full" else None, self.tokens, self.positions)
        if form in ("window", "token"):
            a, w = self.draw_window(rng, (1, 1) if form == "token" else window)
            return Acts(None, self.tokens[a:a + w], self.positions[a:a + w])
        raise UavError(f"unknown input form {form!r}", f"use one of {', '.join(FORMS)}")

    def draw_window(self, rng: np.random.Generator, window: tuple[int, int]) -> tuple[int, int]:
        """(first index into the stored tokens, length) of a window whose length is drawn from ``window``."""
        n = len(self.positions)
        w = int(rng.integers(min(window[0], n), min(window[1], n) + 1))
        return int(rng.integers(0, n - w + 1)), w


def answer_end(text: str, answer: str) -> int | None:
    """Where the last mention of ``answer`` in ``text`` ends (a character offset; any case, whole words), or None when
    the text never states it: a view from there asks about something only the positions before it said."""
    a = answer.strip().rstrip(".").strip()
    if not a:
        return None
    found = [m.end() for m in re.finditer(r"(?<!\w)" + re.escape(a) + r"(?!\w)", text, flags=re.IGNORECASE)]
    return found[-1] if found else None


def _piece(text: str, spans: np.ndarray) -> tuple[int, int] | None:
    """The characters [begin, end) the given token spans cover in the text (None when no token is part of it)."""
    inside = spans[spans[:, 0] >= 0]
    return (int(inside[:, 0].min()), int(inside[:, 1].max())) if len(inside) else None


def context_item(row: RowActs, text: str, rng: np.random.Generator, window: tuple[int, int],
                 words: int = CONTEXT_WORDS) -> tuple[Acts, str, str, str] | None:
    """A self-supervised item from one row: a window of its token vectors, and a question asking for the window's
    own text, or the ``words`` words just before or after it. Returns (acts, question, answer, kind), or None when
    the window covers no character of the text (e.g. a BOS alone)."""
    a, w = row.draw_window(rng, window)
    pos = row.positions[a:a + w]
    piece = _piece(text, row.spans[pos])
    if piece is None:
        return None
    before = text[:piece[0]].split()[-words:]
    after = text[piece[1]:].split()[:words]
    kinds = ["own"] + (["before"] if before else []) + (["after"] if after else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    answer = {"own": text[piece[0]:piece[1]], "before": " ".join(before), "after": " ".join(after)}[kind]
    question = CONTEXT[kind][int(rng.integers(len(CONTEXT[kind])))]
    # where the pooled layers' vectors are at hand (a run with views), the window's read-out pooled over it too: at
    # depth its positions hold what came before them, which a "before" question asks for
    pooled = row.pooled_over(np.arange(a, a + w)) if row.deep is not None and a > 0 else None
    return Acts(pooled, row.tokens[a:a + w], pos), question, answer, f"context_{kind}"


@dataclass
class Item:
    x: Acts
    question: str
    answer: str
    row: int
    store: int
    task: str
    source: str
    text: str
    kind: str = "open"  # open (a qa pair), yesno, context_own / context_before / context_after (self-supervised)
    phrasing: str = "seen"  # heldout: a question phrasing never trained on (evaluation only)
    heldout_dataset: bool = False  # the item's dataset is held out of training (its recipe says so)
    view_from: int | None = None  # the item is shown a view: the positions from this character of its text on


def item_pairs(example: dict, mode: str) -> list[tuple[str, str]]:
    """(question, answer) pairs one example yields: its qa list (stage 2) or the text itself (stage 1). A pair whose
    phrasing is held out (``"phrasing": "heldout"``) is never trained on: evaluation (mode "eval") alone asks it."""
    if mode == "text":
        return [(STAGE1_QUESTION, example["text"])]
    return [(q["question"], q["answer"]) for q in example.get("qa", [])
            if mode == "eval" or q.get("phrasing") != "heldout"]


def read_rows(store: Store, rows: np.ndarray, spec: InputSpec, spans: bool = False) -> list[RowActs]:
    """What ``spec`` reads of each of ``rows`` (any order), token vectors read a shard at a time: a streaming chunk
    (consecutive rows) in one read per layer, scattered rows (an evaluation) one by one. Tensors keep the stored
    dtype (half the memory of float32 in a shuffle buffer); :func:`stack_acts` makes them float32. A spec with views
    also reads the pooled layers' token vectors and every row's character spans."""
    rows = np.asarray(rows, dtype=np.int64)
    pairs = [(layer, r) for layer in spec.layers for r in spec.readouts] if spec.pooled else []
    pooled: list[torch.Tensor | None] = [None] * len(rows)
    if pairs and len(rows):
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 2 * len(rows):  # dense: one read of the span
            block = torch.stack([store.read(layer, lo, hi, r) for layer, r in pairs], 1)
            # clone: a view would keep the whole chunk alive while any one of its rows sits in the shuffle buffer
            pooled = [block[int(r) - lo].clone() for r in rows]
        else:
            pooled = list(torch.stack([store.read_rows(layer, rows, r) for layer, r in pairs], 1))
    groups = {"tokens": spec.token_layers, "deep": spec.layers if spec.views else ()}
    got: dict[str, list[torch.Tensor | None]] = {k: [None] * len(rows) for k in groups}
    positions: list[np.ndarray | None] = [None] * len(rows)
    if any(groups.values()) and len(rows):
        shard = rows // store.meta["shard_rows"]
        for s in np.unique(shard).tolist():
            idx = np.flatnonzero(shard == s)
            lo, hi = int(rows[idx].min()), int(rows[idx].max()) + 1
            dense = hi - lo <= 2 * len(idx)
            for key, layers in groups.items():
                if not layers:
                    continue
                if dense:
                    per_layer = [store.read_token_rows(layer, lo, hi) for layer in layers]
                    by_row = {r: torch.stack([p[r - lo] for p in per_layer], 1) for r in range(lo, hi)}
                else:
                    by_row = {int(r): torch.stack([store.read_tokens(layer, int(r)) for layer in layers], 1)
                              for r in rows[idx]}
                for i in idx:
                    got[key][i] = by_row[int(rows[i])]
            for i in idx:
                positions[i] = store.stored_positions(int(rows[i]))
    sp: list[np.ndarray | None] = [None] * len(rows)
    if (spans or spec.views) and len(rows):
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 2 * len(rows):
            block_spans = store.char_spans(lo, hi)
            sp = [block_spans[int(r) - lo] for r in rows]
        else:
            sp = [store.char_spans(int(r), int(r) + 1)[0] for r in rows]
    return [RowActs(p, t, q, c, d, spec.readouts)
            for p, t, q, c, d in zip(pooled, got["tokens"], positions, sp, got["deep"])]


class ItemStream:
    """An endless, deterministic, shuffled stream of :class:`Item` over one split of one or more stores."""

    def __init__(self, stores: list[Store], split: str, *, layers: list[str] | None = None, mode: str = "qa",
                 seed: int = 0, shuffle_buffer: int = 1024, rank: int = 0, world: int = 1,
                 prefetch: int = 512, epochs: int | None = None, skip_corrupt: bool = False, readout: str = "last",
                 sources: list[str] | None = None, weights: dict[str, float] | None = None,
                 spec: InputSpec | None = None, context: float = 0.0, yesno: float = 1.0, views: float = 0.0):
        """``mode``: "qa" (each example's qa pairs, plus ``context`` self-supervised items per text and epoch),
        "text" (stage 1: the whole text), "context" (self-supervised items only, ``context`` per text, at least 1).
        ``spec`` says what items show the adapter (default: the ``readout`` of ``layers``, pooled only). With a spec
        that has views, an example's ``shown_from`` places its items' view, and ``views`` is the share of the other
        QA items whose answer their text states that are shown the view after its last mention."""
        if mode not in ("qa", "text", "context"):
            raise ValueError(f"unknown stream mode {mode!r}")
        self.stores, self.split, self.mode = stores, split, mode
        self.spec = spec or InputSpec(layers=tuple(layers or stores[0].layers), readout=readout)
        self.context = max(context, 1.0) if mode == "context" else (context if mode == "qa" else 0.0)
        if self.context and not self.spec.tokens:
            raise UavError("self-supervised (context) items are windows of token vectors, and this run reads none",
                           "set token_layers (a store harvested with --positions all or window:W)")
        self.sources = set(sources) if sources else None  # only rows of these sources (None: every source)
        # source → expected copies of each of its items per epoch (default 1): 3 = three times, 0.5 = half of them
        self.weights = dict(weights or {})
        self.yesno = yesno  # times each yes/no question is seen per epoch, on top of its source's weight
        self.views = views if self.spec.views and mode == "qa" else 0.0
        bad = {k: v for k, v in self.weights.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0}
        if bad:
            raise UavError(f"source weights must be numbers > 0, got {bad}", "e.g. source_weights = {bbc_topic = 3}")
        self.seed, self.buffer = seed, shuffle_buffer
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
                if len(rows):  # records read per chunk: held-out datasets never train; qa mode needs qa pairs
                    recs = st.records(lo, hi)
                    rows = rows[[not recs[r - lo].get("heldout_dataset") and not recs[r - lo].get("alone_of") and (
                        self.mode != "qa" or self.context > 0 or bool(item_pairs(recs[r - lo], self.mode)))
                        for r in rows]]
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
                        acts = read_rows(st, rows, self.spec, spans=bool(self.context))
                    except Exception as e:  # a garbled/truncated chunk surfaces as a codec, key or OS error
                        if isinstance(e, UavError) and not isinstance(e, UnreadableChunk):  # a missing file: ours
                            raise
                        self._unreadable(int(ci), st, rows, e)
                        continue
                    for r, ra in zip(rows, acts):
                        buf.extend(self._items(recs[r - lo], int(r), si, ra, rng))
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

    def _items(self, e: dict, r: int, si: int, ra: RowActs, rng: np.random.Generator) -> list[Item]:
        """One row's items for this epoch: its qa pairs (each shown a form drawn from the spec's forms; stage 1: the
        whole text), and its self-supervised items, each repeated by its source's weight (2.5: twice, and a third
        time half of the epochs)."""
        if (e.get("heldout_dataset") or e.get("alone_of")) and self.mode != "eval":  # never trained on: not even its text
            return []
        source = e.get("source") or ""
        w = self.weights.get(source, 1)
        copies = lambda x: int(x) + bool(x % 1 and rng.random() < x % 1)  # noqa: E731
        forms, p = zip(*self.spec.forms) if self.mode == "qa" else ((self.spec.eval_form(),), (1.0,))
        p = np.asarray(p, dtype=float) / sum(p)
        out = []
        for q, a in (item_pairs(e, self.mode) if self.mode != "context" else []):
            for _ in range(copies(w * self.yesno) if self.mode == "qa" and answer_kind(a) == "yesno" else copies(w)):
                form = forms[int(rng.choice(len(forms), p=p))]
                at, x = self._view(e, a, ra, rng)
                out.append(Item(x or ra.form(form, rng, self.spec.window), q, a, r, si, task_of(e, a), source,
                                e["text"], kind=answer_kind(a), view_from=at if x is not None else None))
        for _ in range(copies(self.context * w)):
            c = context_item(ra, e["text"], rng, self.spec.window)
            if c is not None:
                out.append(Item(c[0], c[1], c[2], r, si, "context", source, e["text"], kind=c[3]))
        return out

    def _view(self, e: dict, answer: str, ra: RowActs, rng: np.random.Generator) -> tuple[int | None, Acts | None]:
        """(where the view starts, what it shows) for one QA item, or (None, None) for the whole text: the example's
        own ``shown_from`` where it has one, else, for a ``views`` share of the items whose answer the text states,
        the positions after its last mention."""
        if not self.spec.views or self.mode != "qa":
            return None, None
        at = e.get("shown_from")
        if at is None:
            if not self.views or rng.random() >= self.views:
                return None, None
            at = answer_end(e["text"], answer)
            if at is None:
                return None, None
        return at, ra.view(at)

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
                if not item.x.finite():
                    self.bad += 1
                    warnings.warn(f"skipping row {item.row} of {self.stores[item.store].path}: NaN/inf activations")
                    continue
                self.seen += 1
                yield item
        finally:
            # a consumer that stops early (a break, the end of training) waits for the reader to notice: a daemon
            # thread still inside zarr or torch when the interpreter exits can abort the process (SIGABRT)
            stop.set()
            t.join(timeout=30)

    def batches(self, batch_size: int, skip: int = 0, groups: int = 1,
                length: Callable[[Item], int] | None = None) -> Iterator[list[Item]]:
        """This rank's part of each global batch of ``batch_size`` items (all of it for one process); the first
        ``skip`` items of the global stream are dropped (resuming a run mid-stream).

        ``groups`` > 1 (with ``length``, an item's sequence length): ``groups`` batches' worth of items is drawn at
        a time, sorted by length and cut into batches that go out in a fixed random order. A padded batch costs its
        longest item times its size, so like lengths together cost less: the same items, in another order.
        Deterministic per (seed, pool), so ``skip`` (whole batches consumed) resumes mid-pool exactly."""
        it = iter(self)
        if groups <= 1 or length is None:
            for _ in range(skip):
                next(it)
            while batch := [item for _, item in zip(range(batch_size), it)]:
                yield batch[self.rank::self.world]
            return
        pool_no, drop = divmod(skip, groups * batch_size)
        for _ in range(pool_no * groups * batch_size):
            next(it)
        drop //= batch_size
        while pool := sorted((item for _, item in zip(range(groups * batch_size), it)), key=length):
            cut = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
            for j in np.random.default_rng([self.seed, 7919, pool_no]).permutation(len(cut))[drop:]:
                yield cut[j][self.rank::self.world]
            pool_no, drop = pool_no + 1, 0


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


def answer_kind(answer: str) -> str:
    """A question's kind from its answer: "yesno" when the answer is yes or no (any case, a trailing period or "!"),
    else "open"."""
    return "yesno" if answer.strip().lower().rstrip(".!") in ("yes", "no") else "open"


def task_of(example: dict, answer: str) -> str:
    """The group a question is reported in: "yesno" for a yes/no question (whatever its example's task), else the
    example's task."""
    return "yesno" if answer_kind(answer) == "yesno" else (example.get("task") or "")


def stack_acts(acts: list[Acts]) -> AdapterInput:
    """A batch of Acts as float32 tensors: pooled (B, Lp, d) with has_pooled (B,), and tokens padded to the longest
    window (B, S, Lt, d) with mask (B, S). A part no item shows is None."""
    b = len(acts)
    out = AdapterInput()
    pooled = [a.pooled for a in acts if a.pooled is not None]
    if pooled:
        out.pooled = torch.zeros(b, *pooled[0].shape)
        out.has_pooled = torch.zeros(b, dtype=torch.bool)
        for i, a in enumerate(acts):
            if a.pooled is not None:
                out.pooled[i], out.has_pooled[i] = a.pooled.float(), True
    toks = [a.tokens for a in acts if a.tokens is not None]
    if toks:
        s = max(t.shape[0] for t in toks)
        out.tokens = torch.zeros(b, s, *toks[0].shape[1:])
        out.mask = torch.zeros(b, s, dtype=torch.bool)
        for i, a in enumerate(acts):
            if a.tokens is not None:
                out.tokens[i, :len(a.tokens)], out.mask[i, :len(a.tokens)] = a.tokens.float(), True
    return out


def stack_x(items: list[Item]) -> AdapterInput:
    """The adapter input of a batch of items (:func:`stack_acts` of their Acts)."""
    return stack_acts([it.x for it in items])
