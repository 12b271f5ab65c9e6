"""Writing a store: :class:`StoreWriter` creates one (built in a temp folder, then renamed into place) or re-opens a
matching one, writes row shards and commits them one at a time; :meth:`StoreWriter.finalize` merges the commits'
statistics once every shard is in.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from uav_cache import __version__
from uav_cache.errors import UavError
from uav_cache.files import replaced_atomically, write_json_atomic
from uav_cache.store.format import (ROOT_FIX, array_name, codec_of, codecs, commit_listing, compressor, damaged_root,
                                    diff_identity, merge_moments, moments, read_commit, read_meta, sha256, stats_key,
                                    table_sha256, tokens_name)
from uav_cache.store.raw import encode_shard
from uav_cache.store.readouts import parse_positions, readouts_of, token_layers_of, window_start

# writers store every chunk, an all-zero one too: no per-chunk emptiness test, and no chunk whose absence a reader
# must tell apart from a lost file
_WRITE_ALL = {"write_empty_chunks": True}


class StoreWriter:
    """Creates a store (atomically: built in a temp folder, then renamed) or re-opens a matching one,
    and writes/commits row shards. Construct with :meth:`create_or_open`."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        self.group = zarr.open_group(str(path), mode="r+")
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def create_or_open(cls, path: str | Path, meta: dict, examples: list[dict],
                       token_ids: list[list[int]], truncated: list[bool],
                       spans: list[list[tuple[int, int]]] | None = None) -> "StoreWriter":
        """Open ``path`` for writing ``meta``'s rows; refuse a store whose identity differs.

        ``meta`` must hold every key of :data:`IDENTITY_KEYS` plus descriptive fields; the static tables
        (examples, token ids) are written once, at creation, so every shard writer sees the same plan.
        """
        if "://" in str(path):  # checked before Path(), which collapses "s3://b" to "s3:/b"
            raise UavError(f"harvest writes local stores only, got {path}",
                           "harvest to a local folder, then copy it; readers accept any fsspec URL")
        path = Path(path)
        if meta["shard_rows"] % min(meta["chunk_rows"], meta["shard_rows"]):
            raise UavError(f"shard_rows {meta['shard_rows']} is not a multiple of chunk_rows {meta['chunk_rows']}",
                           "pick shard_rows as a multiple of chunk_rows, or at most chunk_rows")
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            existing = read_meta(path)
            if existing is None and damaged_root(path):
                raise UavError(f"store {path} is damaged: {damaged_root(path)}", ROOT_FIX)
            if existing is None:
                raise UavError(f"{path} exists and is not a uav activation store",
                               "choose another --out path (nothing was written)")
            diff = diff_identity(existing, meta)
            if diff:
                raise UavError(f"{path} holds a different harvest ({'; '.join(diff)})",
                               "use a new --out path, or delete the old store to replace it")
            return cls(path, existing)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.creating"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_layout(tmp, meta, examples, token_ids, truncated, spans)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-built layout must not litter the parent folder
            if not isinstance(e, OSError):
                raise
            raise UavError(f"cannot create store at {path}: {e.strerror or e}",
                           "check the path is writable and the disk has space") from e
        try:
            os.rename(tmp, path)  # atomic; fails if another process won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return cls.create_or_open(path, meta, examples, token_ids, truncated, spans)
        return cls(path, meta)

    def shard_range(self, s: int) -> tuple[int, int]:
        r = self.meta["shard_rows"]
        return s * r, min((s + 1) * r, self.meta["n_rows"])

    def _array(self, name: str) -> zarr.Array:
        # opened once (each lookup reads the array's zarr.json)
        if name not in self._arrays:
            self._arrays[name] = self.group[name].with_config(_WRITE_ALL)
        return self._arrays[name]

    def _write_raw_shard(self, name: str, s: int, bits: np.ndarray) -> None:
        """Shard ``s`` of a raw-codec row array, encoded in one write (raw.encode_shard): zarr reads it back (tests
        read every store through it). A new file renamed over the old one, never rewritten in place: a reader that has
        the old file open (a shard being re-harvested) keeps the complete old bytes, never a half-written file."""
        folder = self.path / name / "c" / str(s)
        folder.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(folder / "0") as tmp, open(tmp, "wb") as f:
            f.writelines(encode_shard(bits, self.meta["chunk_rows"], self.meta["shard_rows"]))

    def committed(self) -> set[int]:
        return commit_listing(self.path)[0]

    def pending_shards(self, rank: int = 0, world: int = 1) -> list[int]:
        """Shards this writer owns (``s % world == rank``) that are not committed yet."""
        done = self.committed()
        return [s for s in range(self.meta["n_shards"]) if s % world == rank and s not in done]

    def write_shard(self, s: int, last: dict[str, np.ndarray], all_tokens: dict[str, np.ndarray] | None = None,
                    pooled: dict[str, dict[str, np.ndarray]] | None = None) -> None:
        """Write every array of shard ``s`` then commit it. ``last[layer]`` is (rows, d) uint16 bits;
        ``pooled[readout][layer]`` the same for each other read-out the store holds; ``all_tokens[layer]``
        (positions all or window:W) is (the stored token positions of these rows, d) uint16 bits."""
        a, b = self.shard_range(s)
        meta = self.meta
        commit: dict[str, Any] = {"shard": s, "rows": [a, b], "sha256": {}, "stats": {}, "uav_version": __version__}
        vectors = {"last": last, **(pooled or {})}
        missing = [r for r in readouts_of(meta) if r not in vectors]
        if missing:
            raise ValueError(f"shard {s}: no vectors for read-out(s) {missing} of this store")
        writes: list[tuple[str, np.ndarray, slice | None]] = []  # (array, bits, rows; None = a new per-shard array)
        summarise: dict[str, np.ndarray] = {}  # stats key → the vectors its moments come from
        for layer in meta["layers"]:
            for readout in readouts_of(meta):
                bits = vectors[readout][layer]
                if bits.shape != (b - a, meta["d_model"]) or bits.dtype != np.uint16:
                    raise ValueError(f"shard {s} layer {layer} {readout}: got {bits.shape} {bits.dtype}, "
                                     f"want {(b - a, meta['d_model'])} uint16")
                writes.append((array_name(layer, readout), bits, slice(a, b)))
                summarise[stats_key(layer, readout)] = bits
            if layer in token_layers_of(meta):
                writes.append((tokens_name(layer, s), all_tokens[layer], None))
        try:
            # The checksums run beside the writes and the moments (hashlib releases the GIL for the whole hash); the
            # moments stay on this thread: beside a second thread they measured up to 3× slower on 2 cores
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="uav-sha256") as pool:
                digests = {name: pool.submit(sha256, bits) for name, bits, _ in writes}
                for name, bits, rows in writes:
                    if rows is None:  # token vectors: one ragged array per shard
                        self.group.create_array(
                            name, shape=bits.shape, dtype="uint16", chunks=(min(max(len(bits), 1), 4096), bits.shape[1]),
                            fill_value=0, overwrite=True, **codecs(codec_of(meta))).with_config(_WRITE_ALL)[:] = bits
                    elif codec_of(meta) == "raw":
                        self._write_raw_shard(name, s, bits)
                    else:
                        self._array(name)[rows] = bits
                commit["stats"] = {k: moments(bits, meta["dtype"]) for k, bits in summarise.items()}
                commit["sha256"] = {name: f.result() for name, f in digests.items()}
            commit["committed"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            write_json_atomic(self.path / "_commits" / f"s{s:05d}.json", commit)
        except OSError as e:
            raise UavError(f"cannot write shard {s} of {self.path}: {e.strerror or e}",
                           "free disk space or fix permissions, then re-run: committed shards are kept") from e

    def finalize(self) -> bool:
        """If every shard is committed, merge their stats into the root metadata. Idempotent."""
        if not set(range(self.meta["n_shards"])) <= self.committed():
            return False
        commits = [read_commit(self.path, s) for s in range(self.meta["n_shards"])]
        stats = {key: merge_moments([c["stats"][key] for c in commits]) for key in commits[0]["stats"]}
        root = self.path / "zarr.json"
        doc = json.loads(root.read_text())
        doc["attributes"]["uav_store"] = {**self.meta, "complete": True, "stats": stats}
        write_json_atomic(root, doc)  # zarr writes this file in place; we replace it atomically instead
        self.meta = doc["attributes"]["uav_store"]
        return True


def _create_layout(tmp: Path, meta: dict, examples: list[dict], token_ids: list[list[int]], truncated: list[bool],
                   spans: list[list[tuple[int, int]]] | None = None) -> None:
    n, d, R = meta["n_rows"], meta["d_model"], meta["shard_rows"]
    g = zarr.open_group(str(tmp), mode="w")
    g.attrs["uav_store"] = {**meta, "complete": False}

    def table(name: str, values: np.ndarray, chunk: int = meta["chunk_rows"]) -> None:
        # chunked like the activations, so a streaming reader decodes only the rows it is reading; every chunk written
        # and CRC32C-checked, and the whole table's checksum in its attributes (verify compares it)
        text = values.dtype == np.dtypes.StringDType()
        arr = g.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(max(1, min(len(values), chunk)),),
                             compressors=(ZstdCodec(level=0) if text else compressor(), Crc32cCodec()),
                             attributes={"sha256": table_sha256(values)})
        arr.with_config(_WRITE_ALL)[...] = values

    table("examples/id", np.array([e["id"] for e in examples], dtype=np.dtypes.StringDType()))
    table("examples/split", np.array([e.get("split", "train") for e in examples], dtype=np.dtypes.StringDType()))
    table("examples/task", np.array([e.get("task") or "" for e in examples], dtype=np.dtypes.StringDType()))
    table("examples/source", np.array([e.get("source") or "" for e in examples], dtype=np.dtypes.StringDType()))
    table("examples/record", np.array([json.dumps(e, ensure_ascii=False, sort_keys=True) for e in examples],
                                      dtype=np.dtypes.StringDType()))
    lengths = np.array([len(t) for t in token_ids], dtype=np.int32)
    table("examples/n_tokens", lengths)
    table("examples/truncated", np.array(truncated, dtype=bool))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    table("tokens/offsets", offsets)
    table("tokens/ids", np.concatenate([np.asarray(t, dtype=np.int32) for t in token_ids]) if n else np.zeros(0, np.int32),
          chunk=1 << 16)
    if spans is not None:  # each token's characters in its example's text ([-1, -1]: a special or template token)
        flat = np.array([sp for row in spans for sp in row], dtype=np.int32).reshape(-1, 2)
        g.create_array("tokens/spans", shape=flat.shape, dtype=np.int32, chunks=(max(1, min(len(flat), 1 << 16)), 2),
                       compressors=compressor())[...] = flat
    width = parse_positions(meta["positions"])
    if width != 0:  # the token positions whose vectors are stored: [start, start + count) per row
        starts = np.array([window_start(e["id"], int(k), width) for e, k in zip(examples, lengths)], dtype=np.int32)
        counts = lengths if width is None else np.minimum(lengths, width)
        pos_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=pos_off[1:])
        table("positions/start", starts)
        table("positions/offsets", pos_off)
    for layer in meta["layers"]:
        for readout in readouts_of(meta):
            g.create_array(array_name(layer, readout), shape=(n, d), dtype="uint16", chunks=(min(meta["chunk_rows"], R), d),
                           shards=(R, d), fill_value=0, **codecs(codec_of(meta)))
    (tmp / "_commits").mkdir()
