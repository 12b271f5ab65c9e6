"""Reading a store, local or over any fsspec URL: :class:`Store` (its tables, read-outs and token vectors, from the
committed shards only) with the checks that refuse a damaged or mismatched store before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from uav_cache.errors import UavError
from uav_cache.examples.schema import SPLITS
from uav_cache.store.format import (CHUNK_FIX, FILL_IS_VALID, FORMAT_VERSION, OPTIONAL_TABLES, ROOT_FIX, TABLES,
                                    UnreadableChunk, array_name, codec_of, commit_listing, damaged_root, fs_of,
                                    from_bits, is_local, merge_moments, protocols, read_commit, read_meta, sha256,
                                    stats_key, table_sha256, tokens_name, why_unreadable)
from uav_cache.store.raw import RawArray
from uav_cache.store.readouts import READOUTS, parse_positions, readouts_of, token_layers_of


def check_range_requests(path: str) -> None:
    """Refuse a web server that ignores HTTP Range requests. Sharded Zarr reads a shard's index and chunks as byte
    ranges of one file; a server that answers every request with the whole file (Python's http.server does) makes
    those reads return wrong bytes, which would surface later as a false "checksum mismatch" or a codec error."""
    fs, root = fs_of(path)
    if not {"http", "https"} & set(protocols(fs)):
        return
    try:
        got = fs.cat_file(f"{root}/zarr.json", start=0, end=16)
    except FileNotFoundError:
        return  # not a store: the caller says so
    if len(got) != 16:
        raise UavError(f"the web server at {path} ignores HTTP Range requests (asked for 16 bytes of zarr.json, "
                       f"got {len(got)}: the whole file); sharded Zarr stores are read as byte ranges",
                       "serve the store with a server that honours Range (nginx, Caddy, Apache, S3/GCS/Azure object "
                       "storage; not `python -m http.server`), or copy the store and read it locally")


class Store:
    """Read side of a store, local path or fsspec URL. Only committed shards are visible."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        meta = read_meta(path)
        if meta is None:
            if damaged_root(path):
                raise UavError(f"store {path} is damaged: {damaged_root(path)}", ROOT_FIX)
            raise UavError(f"{path} is not a uav activation store (no zarr.json with uav_store metadata)",
                           "pass the --out folder of a `uav harvest` run")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UavError(f"{path} uses store format {meta.get('format_version')}, this uav reads {FORMAT_VERSION}",
                           "re-harvest, or install the uav version that wrote it")
        check_range_requests(self.path)
        self.meta = meta
        self.group = zarr.open_group(self.path, mode="r")
        self._examples: list[dict] | None = None
        self._present: set[str] = set()  # data files seen to exist (or proven empty by their commit)
        self._raw: dict[str, RawArray | None] = {}
        self._complete_remote: list[int] | None = None

    # ---- plan
    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def n_rows(self) -> int:
        return self.meta["n_rows"]

    def refresh(self) -> None:
        fresh = read_meta(self.path)
        if fresh is not None:
            self.meta = fresh

    def committed(self) -> list[int]:
        if self._complete_remote is not None:
            return self._complete_remote
        shards = sorted(commit_listing(self.path, self.meta["n_shards"])[0])
        if self.meta.get("complete") and not is_local(fs_of(self.path)[0]):
            self._complete_remote = shards  # a finished store gains no shards: one listing over the network is enough
        return shards

    def shard_range(self, s: int) -> tuple[int, int]:
        r = self.meta["shard_rows"]
        return s * r, min((s + 1) * r, self.n_rows)

    def shard_of(self, row: int) -> int:
        return row // self.meta["shard_rows"]

    def chunk_spans(self) -> list[tuple[int, int]]:
        """Row ranges [lo, hi) of every committed inner chunk, in row order: the unit a streaming reader fetches
        (one chunk read decodes nothing it does not use)."""
        c = min(self.meta["chunk_rows"], self.meta["shard_rows"])
        spans = []
        for s in self.committed():
            a, b = self.shard_range(s)
            spans += [(lo, min(lo + c, b)) for lo in range(a, b, c)]
        return spans

    def committed_rows(self) -> np.ndarray:
        rows = [np.arange(*self.shard_range(s)) for s in self.committed()]
        return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

    # ---- tables
    def _table(self, name: str, sel: slice = slice(None)) -> np.ndarray:
        """Rows of a table; an unreadable chunk (a CRC32C mismatch, a garbled or truncated file) is one line naming
        the table and `uav store verify`, not a codec traceback."""
        try:
            return self.group[name][sel]
        except Exception as e:  # noqa: BLE001 - zarr surfaces damage as codec, key or value errors
            why = self._why(name, e, sel.start, sel.stop)
            raise UavError(f"table {name} of store {self.path} is unreadable ({why})",
                           f"run `uav store verify {self.path}`; a damaged table needs a new harvest") from e

    def _why(self, name: str, e: Exception, lo: int | None = None, hi: int | None = None) -> str:
        """Why array ``name`` did not read rows [lo, hi): the files among them that fail to decode (read one by one,
        now that a read of them all has failed), then the reason (uav_cache.store.format.why_unreadable)."""
        try:
            arr = self.group[name]
            size = (arr.shards or arr.chunks)[0]
            lo, hi = lo or 0, arr.shape[0] if hi is None else min(hi, arr.shape[0])
            bad = []
            for i in range(lo // size, -(-hi // size)):
                try:
                    arr[i * size:(i + 1) * size]
                except Exception:  # noqa: BLE001 - the failure being located
                    bad.append("/".join([name, "c", str(i)] + ["0"] * (arr.ndim - 1)))
        except Exception:  # noqa: BLE001 - the array itself does not open: nothing to locate
            bad = []
        where = ", ".join(bad[:3]) + (" …" if len(bad) > 3 else "")
        return f"{where}: {why_unreadable(e)}" if bad else why_unreadable(e)

    def _records(self, start: int | None, stop: int | None) -> list[dict]:
        out = []
        for i, r in enumerate(self._table("examples/record", slice(start, stop))):
            try:
                out.append(json.loads(r))
            except json.JSONDecodeError:
                raise UavError(f"table examples/record of store {self.path} is damaged (row {(start or 0) + i} is not "
                               "JSON)", f"run `uav store verify {self.path}`; a damaged table needs a new harvest") from None
        return out

    def examples(self) -> list[dict]:
        """Every example record (text, task, qa, …), in row order."""
        if self._examples is None:
            self._examples = self._records(None, None)
        return self._examples

    def records(self, start: int, stop: int) -> list[dict]:
        """Example records of rows [start, stop) only: what a streaming reader needs, without the table."""
        if self._examples is not None:
            return self._examples[start:stop]
        return self._records(start, stop)

    COLUMNS = ("id", "split", "task", "source", "n_tokens", "truncated")

    def column(self, name: str) -> np.ndarray:
        """One per-row field of the examples table for every row (``id``, ``split``, ``task``, ``source``,
        ``n_tokens``, ``truncated``): readers ask by field, never by array path."""
        if name not in self.COLUMNS:
            raise UavError(f"no per-row column {name!r}", f"use one of {', '.join(self.COLUMNS)}")
        return self._table(f"examples/{name}")

    def split_rows(self, split: str) -> np.ndarray:
        """Committed rows of one split, in row order."""
        splits = self.column("split")
        rows = self.committed_rows()
        return rows[splits[rows] == split]

    def token_ids(self, row: int) -> np.ndarray:
        off = self._table("tokens/offsets", slice(row, row + 2))
        return self._table("tokens/ids", slice(int(off[0]), int(off[1])))

    # ---- activations
    def resolve_layer(self, layer: str | int) -> str:
        """A stored layer's module path from its path or its block index ("23", 23 → "model.layers.23")."""
        if str(layer).lstrip("-").isdigit():
            idx = dict(zip(self.meta.get("layer_indices", []), self.meta["layers"]))
            if int(layer) in idx:
                return idx[int(layer)]
            raise UavError(f"block {layer} is not in store {self.path} (it has blocks {sorted(idx)}: "
                           f"{', '.join(self.meta['layers'])})", "pick one of the stored blocks, or re-harvest with it")
        self.check_layer(str(layer))
        return str(layer)

    def check_layer(self, layer: str) -> None:
        """Refuse a layer (module path) the store does not hold, naming the ones it does."""
        if layer not in self.meta["layers"]:
            raise UavError(f"layer {layer!r} is not in store {self.path} (it has {self.meta['layers']})",
                           "pick one of the stored layers")

    def _require_files(self, name: str, rows: np.ndarray) -> None:
        """Refuse to read rows of a committed shard whose data file is missing, unless the commit's checksum says
        those rows really are all fill value (zarr writes no file for an all-zero chunk). Rows of uncommitted
        shards are not visible anyway (readers never use them)."""
        arr = self.group[name]
        size = (arr.shards or arr.chunks)[0]
        for i in np.unique(np.asarray(rows) // size).tolist():
            key = f"{name}/c/{i}/0"
            if key in self._present:
                continue
            fs, root = fs_of(self.path)
            if not fs.exists(f"{root}/{key}"):
                s = i if "/all/" not in name else int(name.rsplit("/s", 1)[1])
                a, b = self.shard_range(s)
                try:
                    want = read_commit(self.path, s)["sha256"].get(name)
                except FileNotFoundError:
                    continue  # not committed: not visible, nothing to vouch for
                except json.JSONDecodeError:
                    want = None
                if want is None or sha256(arr[a:b] if "/all/" not in name else arr[:]) != want:
                    raise UnreadableChunk(f"{key} of store {self.path} is missing (rows {a}-{b - 1}, shard {s})",
                                          f"run `uav store verify {self.path}`; re-harvest the shard (delete "
                                          f"_commits/s{s:05d}.json, re-run the harvest); `uav train --skip-corrupt` trains "
                                          "without it")
            self._present.add(key)

    @property
    def readouts(self) -> list[str]:
        return readouts_of(self.meta)

    def check_readout(self, readout: str) -> None:
        if readout not in self.readouts:
            have = ", ".join(self.readouts)
            raise UavError(f"store {self.path} has no {readout!r} read-out (it has {have})",
                           f"pick one of {have}, or re-harvest with --readouts {readout}")

    def read(self, layer: str, start: int, stop: int, readout: str = "last") -> torch.Tensor:
        """One read-out's vectors of rows [start, stop) for one layer, as the stored logical dtype."""
        return self._read(layer, readout, np.arange(start, max(start, min(stop, self.n_rows))), slice(start, stop))

    def read_last(self, layer: str, start: int, stop: int) -> torch.Tensor:
        """Last-token read-out of rows [start, stop) (``read(..., readout="last")``)."""
        return self.read(layer, start, stop, "last")

    def read_rows(self, layer: str, rows: np.ndarray, readout: str = "last") -> torch.Tensor:
        """One read-out's vectors of any rows (a random training batch), in the order given."""
        return self._read(layer, readout, np.asarray(rows, dtype=np.int64))

    def _read(self, layer: str, readout: str, rows: np.ndarray, span: slice | None = None) -> torch.Tensor:
        self.check_layer(layer)
        self.check_readout(readout)
        name = array_name(layer, readout)
        self._require_files(name, rows)
        if name not in self._raw:
            self._raw[name] = RawArray.of(self.path, name, self.group[name])
        if self._raw[name] is not None:  # a local raw store: straight from the shard files
            raw = self._raw[name]
            bits = raw.span(span.start, span.start + len(rows)) if span is not None else raw.rows(rows)
        else:
            try:
                bits = self.group[name][span] if span is not None else \
                    self.group[name].get_orthogonal_selection((rows, slice(None)))
            except Exception as e:  # noqa: BLE001 - a CRC32C mismatch or a garbled chunk, as a codec error
                shards = sorted({self.shard_of(int(r)) for r in rows})
                size = self.meta["shard_rows"]
                raise UnreadableChunk(f"{name} of store {self.path} is unreadable in shard(s) {shards} "
                                      f"({self._why(name, e, shards[0] * size, (shards[-1] + 1) * size)})",
                                      CHUNK_FIX) from e
        return from_bits(bits, self.meta["dtype"])

    def sink_only(self) -> np.ndarray:
        """Per row: the text is one token, so every read-out of it is position 0 (the attention sink)."""
        return self.column("n_tokens") == 1

    @property
    def token_width(self) -> int | None:
        """Token vectors kept per text: 0 (pooled read-outs only), None (every token) or W (window:W)."""
        return parse_positions(self.meta["positions"])

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, offsets): row r's stored token vectors are positions start[r] … start[r] + count − 1 of its text,
        rows offsets[r] … offsets[r+1] − 1 of the concatenation of its shard's token arrays (offsets are global).
        A format-1 store without positions/ tables keeps every token: start 0, offsets = tokens/offsets."""
        if not hasattr(self, "_pos"):
            if self.token_width == 0:
                raise UavError(f"{self.path} holds pooled read-outs only (positions={self.meta['positions']})",
                               "re-harvest with --positions all or --positions window:W (e.g. window:32)")
            if "positions/start" in self.group:
                self._pos = (self._table("positions/start"), self._table("positions/offsets"))
            else:
                self._pos = (np.zeros(self.n_rows, dtype=np.int32), self._table("tokens/offsets"))
        return self._pos

    def stored_positions(self, row: int) -> np.ndarray:
        """The token positions (indices into the row's token ids) whose vectors the store holds for ``row``."""
        start, off = self._positions()
        return np.arange(int(start[row]), int(start[row]) + int(off[row + 1] - off[row]))

    def has_spans(self) -> bool:
        """Whether the store records each token's characters (a format-1 store without tokens/spans does not)."""
        return "tokens/spans" in self.group

    def char_spans(self, start: int, stop: int) -> list[np.ndarray]:
        """Per row of [start, stop): (n_tokens, 2) character [begin, end) of each token in the row's text, [-1, -1]
        for tokens that are not part of it (BOS, chat template). Refused for a store without tokens/spans."""
        if not self.has_spans():
            raise UavError(f"store {self.path} does not record where each token sits in its text (harvested by an "
                           "older uav)", "re-harvest it (a new --out) to train or evaluate on text windows")
        off = self._table("tokens/offsets", slice(start, stop + 1))
        flat = self._table("tokens/spans", slice(int(off[0]), int(off[-1])))
        return [flat[int(a - off[0]):int(b - off[0])] for a, b in zip(off[:-1], off[1:])]

    @property
    def token_layers(self) -> list[str]:
        """The layers whose token vectors the store keeps (the pooled read-outs cover every layer)."""
        return token_layers_of(self.meta)

    def check_token_layer(self, layer: str) -> None:
        self.check_layer(layer)
        if layer not in self.token_layers:
            self._positions()  # a pooled-only store says so first
            raise UavError(f"store {self.path} keeps token vectors of {', '.join(self.token_layers)} only, not {layer}",
                           "pick one of those token layers, or re-harvest with --token-layers including it")

    def read_token_rows(self, layer: str, start: int, stop: int) -> list[torch.Tensor]:
        """The stored token vectors of every row of [start, stop) (rows of one shard), one (count, d) tensor per row,
        with one read of the shard's token array: what a streaming reader fetches per chunk."""
        self.check_token_layer(layer)
        s = self.shard_of(start)
        if self.shard_of(stop - 1) != s:
            raise ValueError(f"rows {start}-{stop - 1} span two shards")
        _, off = self._positions()
        base = int(off[self.shard_range(s)[0]])
        lo, hi = int(off[start]) - base, int(off[stop]) - base
        name = tokens_name(layer, s)
        self._require_files(name, np.arange(lo, hi))
        try:
            block = from_bits(self.group[name][lo:hi], self.meta["dtype"])
        except Exception as e:  # noqa: BLE001 - a CRC32C mismatch or a garbled chunk, as a codec error
            raise UnreadableChunk(f"{name} of store {self.path} is unreadable ({self._why(name, e, lo, hi)})",
                                  CHUNK_FIX) from e
        return [block[int(off[r]) - base - lo:int(off[r + 1]) - base - lo] for r in range(start, stop)]

    def read_tokens(self, layer: str, row: int) -> torch.Tensor:
        """The stored token vectors of one row (every token for positions=all; the row's window for window:W)."""
        return self.read_token_rows(layer, row, row + 1)[0]

    def stats(self, layer: str, readout: str = "last") -> dict:
        """Per-layer mean/std/norm stats of one read-out over all rows; merged from the commits when the store
        is not finalized yet."""
        self.check_layer(layer)
        self.check_readout(readout)
        key = stats_key(layer, readout)
        if "stats" in self.meta:
            return self.meta["stats"][key]
        commits = [read_commit(self.path, s) for s in self.committed()]
        if not commits:
            raise UavError(f"{self.path} has no committed shards yet", "wait for the harvest, or run it")
        return merge_moments([c["stats"][key] for c in commits])

    # ---- checks
    def verify(self) -> list[str]:
        """Every shard committed, every array readable with the right shape and dtype, finite, and equal to
        its commit checksum. Returns the problems found, each naming the broken shard and file."""
        problems: list[str] = []
        m = self.meta
        for s in range(m["n_shards"]):
            a, b = self.shard_range(s)
            try:
                c = read_commit(self.path, s)
            except FileNotFoundError:
                problems.append(f"shard {s} (rows {a}-{b}) is not committed: _commits/s{s:05d}.json missing")
                continue
            except json.JSONDecodeError:
                problems.append(f"shard {s}: commit file _commits/s{s:05d}.json is not valid JSON")
                continue
            for name, want in c["sha256"].items():
                per_row = "/all/" not in name  # read-out arrays are sharded by row; all-token arrays are per shard
                where = f"{name}/c/{s}/0" if per_row else f"{name}/c/0/0"
                try:
                    arr = self.group[name]
                    bits = arr[a:b] if per_row else arr[:]
                except Exception as e:  # a truncated or garbled chunk surfaces as a codec/key error
                    why = self._why(name, e, *((a, b) if per_row else ()))
                    problems.append(f"shard {s}: {name} unreadable ({why})")
                    continue
                if bits.dtype != np.uint16 or bits.shape[-1] != m["d_model"]:
                    problems.append(f"shard {s}: {name} has {bits.shape} {bits.dtype}, want (*, {m['d_model']}) uint16")
                    continue
                if sha256(bits) != want:
                    hint = " (chunk missing: read back as fill value)" if not bits.any() else ""
                    problems.append(f"shard {s}: {where} checksum mismatch{hint}")
                    continue
                x = from_bits(bits, m["dtype"])
                if not torch.isfinite(x).all():
                    problems.append(f"shard {s}: {name} holds NaN/inf")
        problems += self.check_tables()
        committed, stray = commit_listing(self.path, m["n_shards"])
        problems += [f"_commits/{n} is not a commit file (a copy?): remove it" for n in stray]
        problems += [f"_commits/s{s:05d}.json commits shard {s}, but the store has {m['n_shards']} shards"
                     for s in sorted(committed) if s >= m["n_shards"]]
        return problems

    def check_tables(self) -> list[str]:
        """Every table (:data:`TABLES`): each chunk file present, decodable and equal to the table's checksum (where
        its sha256 attribute records one), and the tables consistent with each other (records parse and carry their
        row's id, splits are known, token offsets agree with the counts). The problems found, each naming its file."""
        problems: list[str] = []
        values: dict[str, np.ndarray] = {}
        fs, root = fs_of(self.path)
        local = is_local(fs)
        optional = [t for t in OPTIONAL_TABLES if (Path(root) / t / "zarr.json").is_file()] if local else []
        for name in (*TABLES, *optional):
            try:
                arr = self.group[name]
            except Exception:  # noqa: BLE001 - a missing or garbled array zarr.json
                problems.append(f"table {name} is missing or its {name}/zarr.json is unreadable")
                continue
            want, c, n = arr.attrs.get("sha256"), arr.chunks[0], arr.shape[0]
            bad = False
            for i in range(-(-n // c) if local else 0):  # a remote store: its CRC32Cs and checksums speak for it
                key = "/".join([name, "c", str(i)] + ["0"] * (arr.ndim - 1))
                if not (Path(root) / key).is_file() and (want or name not in FILL_IS_VALID):
                    problems.append(f"table {name}: chunk file {key} is missing (rows {i * c}-{min(n, (i + 1) * c) - 1})")
                    bad = True
            try:
                v = arr[:]
            except Exception as e:  # noqa: BLE001 - a CRC32C mismatch or a garbled chunk surfaces as a codec error
                problems.append(f"table {name} is unreadable ({self._why(name, e)})")
                continue
            if want and not bad and table_sha256(v) != want:
                problems.append(f"table {name} does not match its checksum (a chunk file was changed)")
                bad = True
            if not bad:
                values[name] = v
        return problems + _table_consistency(values, self.n_rows)

    def check_usable(self, allow_incomplete: bool = False) -> None:
        """Refuse, before any work starts, a store that training or evaluation would misread: a damaged table, or an
        unfinished harvest (its missing shards' rows do not exist) unless ``allow_incomplete``."""
        problems = self.check_tables()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UavError(f"store {self.path} is damaged: {problems[0]}{more}",
                           f"run `uav store verify {self.path}` for every problem; harvest again into a new --out")
        done, n = len(self.committed()), self.meta["n_shards"]
        if done < n and not allow_incomplete:
            raise UavError(f"store {self.path} is incomplete: {done} of {n} shards committed (the rows of the other "
                           f"{n - done} do not exist yet)", "finish it (re-run the same `uav harvest` command), or pass "
                           "--allow-incomplete to use the committed rows only")

    def info(self) -> str:
        """A human summary: identity, progress, splits, per-layer stats."""
        m = self.meta
        done = len(self.committed())
        splits = m["dataset"]["split_sizes"]
        lines = [
            f"store      {self.path}",
            f"donor      {m['donor']} ({m.get('family')}, d_model {m['d_model']}, weights {m['weights_fingerprint'][:16]})",
            f"layers     {', '.join(m['layers'])}   positions {m['positions']}"
            + (f" (token vectors of {', '.join(self.token_layers)})" if self.token_width != 0 else "")
            + f"   dtype {m['dtype']}"
            f" (computed in {m.get('compute_dtype', '?')})",
            f"tokenizer  {m['tokenizer'].get('name')} vocab {m['tokenizer'].get('vocab_sha256', '')[:12]}   "
            f"input {m['donor_input']}   max_length {m['max_length']}",
            f"dataset    {m['dataset']['name']} {m['dataset_fingerprint'][:12]}   "
            + "  ".join(f"{k} {v}" for k, v in splits.items()),
            f"rows       {m['n_rows']} in {m['n_shards']} shards of {m['shard_rows']} ({codec_of(m)} codec); "
            f"committed {done}/{m['n_shards']}"
            + ("  (complete)" if done == m["n_shards"] else "  (INCOMPLETE: finalized once, now missing commit files; "
               "run `uav store verify`)" if m.get("complete") else ""),
            f"truncated  {int(self.group['examples/truncated'][:].sum())} texts cut at {m['max_length']} tokens; "
            f"{int(self.sink_only().sum())} one-token texts (their read-outs are the attention-sink position)",
            f"created    {m['created']} by uav {m['uav_version']}",
        ]
        for r in self.readouts:
            lines.append(f"read-out   {r}: {READOUTS.get(r, '(unknown to this uav version)')}")
        if done:
            for layer in m["layers"]:
                for r in self.readouts:
                    st = self.stats(layer, r)
                    lines.append(f"stats      {layer} {r}: |x| {st['norm_mean']:.2f} ± {st['norm_std']:.2f}   "
                                 f"max|x_i| {st['max_abs']:.4g}   rms {st['rms']:.4g}")
        return "\n".join(lines)


def _table_consistency(t: dict[str, np.ndarray], n: int) -> list[str]:
    """What the tables that read back whole (``t``) say against each other: this catches damage that a format-1 table
    without a sha256 attribute cannot show otherwise (a lost chunk reads back as empty strings or zeros)."""
    out: list[str] = []

    def rows(mask: np.ndarray) -> str:
        bad = np.flatnonzero(mask)
        return ", ".join(map(str, bad[:3].tolist())) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")

    for name, v in t.items():
        want = {"tokens/offsets": n + 1, "positions/offsets": n + 1, "tokens/ids": None,
                "tokens/spans": len(t["tokens/ids"]) if "tokens/ids" in t else None}.get(name, n)
        if want is not None and len(v) != want:
            out.append(f"table {name} has {len(v)} rows, the store {want}")
            return out
    if "examples/split" in t and (m := ~np.isin(t["examples/split"], SPLITS)).any():
        out.append(f"table examples/split: rows {rows(m)} name no split ({', '.join(SPLITS)})")
    if "examples/id" in t and (m := t["examples/id"] == "").any():
        out.append(f"table examples/id: rows {rows(m)} are empty")
    if "examples/record" in t:
        ids = t.get("examples/id")
        broken = np.zeros(n, dtype=bool)
        for i, r in enumerate(t["examples/record"].tolist()):
            try:
                rec = json.loads(r)
                broken[i] = ids is not None and rec.get("id") != ids[i]
            except (json.JSONDecodeError, AttributeError):
                broken[i] = True
        if broken.any():
            out.append(f"table examples/record: rows {rows(broken)} are not the JSON record of their example")
    off = t.get("tokens/offsets")
    if off is not None:
        if off[0] != 0 or (np.diff(off) < 1).any():
            out.append("table tokens/offsets does not start at 0 and rise by at least 1 per row")
        elif "examples/n_tokens" in t and (m := np.diff(off) != t["examples/n_tokens"]).any():
            out.append(f"tables tokens/offsets and examples/n_tokens disagree at rows {rows(m)}")
        elif "tokens/ids" in t and off[-1] != len(t["tokens/ids"]):
            out.append(f"table tokens/ids holds {len(t['tokens/ids'])} ids, tokens/offsets says {int(off[-1])}")
    return out


def check_compatible(store: Store, **want: Any) -> None:
    """Refuse a store whose metadata differs from what a run expects (donor, layers, d_model, …)."""
    bad = [f"{k}: store has {_short(store.meta.get(k))}, expected {_short(v)}" for k, v in want.items()
           if v is not None and store.meta.get(k) != v]
    if bad:
        raise UavError(f"store {store.path} does not match this run ({'; '.join(bad)})",
                       "point --store at a store harvested for this run, or change the run config")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 60 else s[:57] + "..."

