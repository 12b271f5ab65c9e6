"""The activation store: the one owner of the on-disk format (see docs/store-format.md).

A store is a Zarr v3 group that a harvest fills shard by shard. The unit of commit is a *row shard*: all
arrays for rows ``[s*R, (s+1)*R)`` are written, then ``_commits/sNNNNN.json`` is renamed into place. A
shard without its commit file does not exist for readers, so a killed harvest leaves nothing half-visible,
a re-run redoes exactly the missing shards, and readers can open a store while another process writes it.
Shard ``s`` is owned by writer ``s % world``: ranks never touch the same file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import google_crc32c
import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from uav_cache import __version__
from uav_cache.errors import UavError
from uav_cache.examples.schema import SPLITS
from uav_cache.files import write_json_atomic

FORMAT = "uav-activation-store"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FP16_MAX = 65504.0
# Keys that say what the rows *are*: two runs that differ in any of them must never share a store.
IDENTITY_KEYS = (
    "format_version", "donor", "weights_fingerprint", "layers", "positions", "dtype", "d_model",
    "tokenizer", "donor_input", "max_length", "dataset_fingerprint", "n_rows", "shard_rows", "compute_dtype",
    "readouts", "token_layers",
)
# identity keys added after format 1 shipped: a store that lacks one still opens and resumes (unknown, not different)
LATER_IDENTITY_KEYS = ("compute_dtype", "token_layers")
# Read-outs: which token positions one stored vector per (row, layer) summarises. Each is its own (n, d) array,
# so a pooled store costs what a last-token store costs, and readers choose by name, never by array path.
READOUTS = {
    "last": "the block's residual output at the last token of the text",
    "mean": "the mean of the block's residual output over every token but the first: position 0 carries the "
            "attention sink (norm ~26,000 in SmolLM2, the BOS in BOS-prefixed tokenizers) and would dominate a plain "
            "mean; a one-token text has only position 0, so its mean is that vector (examples/n_tokens = 1)",
}
DEFAULT_READOUTS = ("last", "mean")

# Which token vectors a store keeps besides its pooled read-outs. Token vectors cost ~(tokens per text) × a pooled
# row, so a store can keep every token or a window of W consecutive tokens per text (placed by a hash of the
# example id: deterministic, spread over the text), which bounds the store at W vectors per text and layer.
POSITIONS = {
    "last": "pooled read-outs only (one vector per text, layer and read-out)",
    "all": "also every token's vector",
    "window:W": "also W consecutive tokens' vectors per text (the whole text when it is shorter), e.g. window:16",
}


def parse_positions(positions: str) -> int | None:
    """How many token vectors per text a ``positions`` value keeps: 0 for last, None (all of them) for all, W for
    window:W. Anything else is refused with the valid forms."""
    if positions == "last":
        return 0
    if positions == "all":
        return None
    kind, _, w = str(positions).partition(":")
    if kind == "window" and w.isdigit() and int(w) >= 1:
        return int(w)
    raise UavError(f"unknown --positions {positions!r}", "use last, all, or window:W with W ≥ 1 (e.g. window:16)")


def window_start(example_id: str, n_tokens: int, width: int | None) -> int:
    """First stored token of a row: 0 for all; for window:W a position in [0, n − W] from the id's hash, so the
    windows of a store cover every part of the texts and a re-harvest picks the same ones."""
    if width is None or n_tokens <= width:
        return 0
    return int(hashlib.sha256(f"window/{example_id}".encode()).hexdigest()[:8], 16) % (n_tokens - width + 1)


# How the activation arrays' inner chunks are encoded. The choice trades size for speed (`make bench` shows both):
# activations barely compress (real SmolLM2 fp16 rows: zstd keeps 93% of the bytes; Gemma bf16 rows: 78%), while
# decoding is what limits a trainer's random reads. "raw" is the default: uncompressed, every inner chunk carrying a
# CRC32C that zarr checks on read and that uav's direct reader checks once per chunk, so corruption is still
# caught. "zstd" (Blosc zstd-3, byte shuffle; what format 1 stores written before codecs existed use) is for stores
# shipped over a network, where bytes cost more than CPU.
CODECS = {
    "raw": "uncompressed, CRC32C per inner chunk: fastest writes and random reads (read directly, no decode)",
    "zstd": "Blosc zstd level 3 with byte shuffle: 7% smaller for fp16, 22% for bf16; slower writes and reads",
}
DEFAULT_CODEC = "raw"


def _compressor() -> BloscCodec:
    # Byte shuffle + zstd: the best lossless ratio measured on real fp16/bf16 activations (NOTES.md).
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


# writers store every chunk, an all-zero one too: no per-chunk emptiness test, and no chunk whose absence a reader
# must tell apart from a lost file
_WRITE_ALL = {"write_empty_chunks": True}


def _codecs(codec: str) -> dict:
    """create_array keyword arguments for an activation array encoded with ``codec``."""
    if codec == "raw":
        return {"serializer": BytesCodec(), "compressors": Crc32cCodec()}
    if codec == "zstd":  # a CRC32C after the compressor: a flipped byte is named on read, not decoded silently
        return {"compressors": (_compressor(), Crc32cCodec())}
    raise UavError(f"unknown store codec {codec!r}", f"use one of: {', '.join(CODECS)}")


# The tables written once, when a store is created (docs/store-format.md §1): `uav store verify` checks each of them,
# and training and evaluation refuse a store whose tables are damaged before any work starts.
TABLES = ("examples/id", "examples/split", "examples/task", "examples/source", "examples/record", "examples/n_tokens",
          "examples/truncated", "tokens/offsets", "tokens/ids")
# tables only some stores have (token positions, token character spans): checked when present
OPTIONAL_TABLES = ("positions/start", "positions/offsets", "tokens/spans")
# tables whose fill value is a valid entry: a store written before tables carried checksums may lack an all-fill chunk
# (positions/start is 0 for every row of a `--positions all` store)
_FILL_IS_VALID = ("examples/task", "examples/source", "examples/truncated", "positions/start")


def _table_sha256(values: np.ndarray) -> str:
    """A table's checksum: its values' bytes, or for strings each one's UTF-8 bytes after its length."""
    if values.dtype.kind not in "OT":
        return _sha256(values)
    h = hashlib.sha256()
    for v in values.tolist():
        b = v.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def codec_of(meta: dict) -> str:
    """The codec of a store's activation arrays (stores written before the choice existed are zstd)."""
    return meta.get("codec", "zstd")


def new_meta(**fields: Any) -> dict:
    """The root metadata of a new store: every identity key (IDENTITY_KEYS, all required) plus descriptive fields,
    with what follows from them filled in here (format, version, shard count, creation time, codec)."""
    if "token_layers" not in fields and "layers" in fields:  # by default every layer keeps what positions says
        fields = {**fields, "token_layers": token_layers_of(fields)}
    missing = [k for k in IDENTITY_KEYS if k != "format_version" and k not in fields]
    if missing:
        raise TypeError(f"store metadata lacks identity key(s) {missing}")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "uav_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "chunk_rows": 512, "codec": DEFAULT_CODEC,
        **fields,
        "n_shards": -(-fields["n_rows"] // fields["shard_rows"]),
    }


def to_bits(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Activations → the uint16 bit patterns we store (zarr has no bfloat16; the round trip is exact)."""
    return x.detach().to(STORAGE_DTYPES[dtype]).contiguous().view(torch.int16).cpu().numpy().view(np.uint16)


def from_bits(bits: np.ndarray, dtype: str) -> torch.Tensor:
    """uint16 bit patterns → a tensor of the logical dtype."""
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(STORAGE_DTYPES[dtype])


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()  # the bytes, not a copy


def _decode_np(bits: np.ndarray, dtype: str) -> np.ndarray:
    """uint16 bit patterns → float32 values in numpy (exact for fp16 and bf16)."""
    if dtype == "fp16":
        return bits.view(np.float16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _moments(bits: np.ndarray, dtype: str, block: int = 512) -> dict:
    """Sufficient statistics of one shard's vectors (float64, exact to rounding), merged into per-layer
    mean/std/norm at the end. Plain numpy (single-threaded: no OpenMP threads spinning against the writer's
    other threads on a small machine), in blocks of rows through preallocated buffers (a whole shard at once
    spends its time faulting in fresh pages)."""
    n, d = bits.shape
    # |x| is monotonic in the bit pattern without its sign bit (fp16 and bf16 alike; the values are finite)
    peak = float(_decode_np(np.array([(bits & 0x7FFF).max(initial=0)], dtype=np.uint16), dtype)[0])
    total, sumsq, norm_sq = np.zeros(d), np.zeros(d), np.empty(n)
    x, sq = np.empty((min(block, n), d)), np.empty((min(block, n), d))
    for a in range(0, n, block):
        m = min(block, n - a)
        xb, sqb = x[:m], sq[:m]
        xb[...] = _decode_np(bits[a:a + m], dtype)
        np.multiply(xb, xb, out=sqb)
        total += xb.sum(0)
        sumsq += sqb.sum(0)
        sqb.sum(1, out=norm_sq[a:a + m])
    return {"count": int(n), "sum": total.tolist(), "sumsq": sumsq.tolist(), "norm_sum": float(np.sqrt(norm_sq).sum()),
            "norm_sumsq": float(norm_sq.sum()), "max_abs": peak}


def _merge_moments(parts: list[dict]) -> dict:
    n = sum(p["count"] for p in parts)
    s = np.sum([p["sum"] for p in parts], axis=0)
    sq = np.sum([p["sumsq"] for p in parts], axis=0)
    mean = s / n
    var = np.maximum(sq / n - mean**2, 0.0)
    nm = sum(p["norm_sum"] for p in parts) / n
    nv = max(sum(p["norm_sumsq"] for p in parts) / n - nm**2, 0.0)
    return {
        "count": n,
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "norm_mean": nm,
        "norm_std": float(np.sqrt(nv)),
        "max_abs": max(p["max_abs"] for p in parts),
        "rms": float(np.sqrt(sq.sum() / (n * len(s)))),
    }


def _layer_key(layer: str) -> str:
    return f"acts/{layer}"


def readouts_of(meta: dict) -> list[str]:
    """The read-outs a store holds (stores written before read-outs existed hold only ``last``)."""
    return list(meta.get("readouts") or ["last"])


def token_layers_of(meta: dict) -> list[str]:
    """The layers whose token vectors a store keeps (stores written before the choice existed: all of them, or none
    for positions=last)."""
    if "token_layers" in meta:
        return list(meta["token_layers"])
    return [] if meta.get("positions", "last") == "last" else list(meta["layers"])


def _identity(meta: dict, k: str) -> Any:
    if k == "readouts":
        return readouts_of(meta)
    return token_layers_of(meta) if k == "token_layers" else meta.get(k)


def _diff_identity(have: dict, want: dict) -> list[str]:
    return [f"{k}: store has {_identity(have, k)!r}, this run has {_identity(want, k)!r}" for k in IDENTITY_KEYS
            if _identity(have, k) != _identity(want, k) and (k in have or k not in LATER_IDENTITY_KEYS)]


def _array(layer: str, readout: str) -> str:
    return f"{_layer_key(layer)}/{readout}"


def _stats_key(layer: str, readout: str) -> str:
    """Commit/metadata stats are keyed by layer for ``last`` (format 1 as first written), ``layer@readout`` else."""
    return layer if readout == "last" else f"{layer}@{readout}"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 60 else s[:57] + "..."


# --------------------------------------------------------------------------------------------------------
# Writing


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
            existing = _read_meta_or_none(path)
            if existing is None and damaged_root(path):
                raise UavError(f"store {path} is damaged: {damaged_root(path)}", ROOT_FIX)
            if existing is None:
                raise UavError(f"{path} exists and is not a uav activation store",
                               "choose another --out path (nothing was written)")
            diff = _diff_identity(existing, meta)
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
        """Shard ``s`` of a raw-codec row array, encoded here in one write: the exact bytes zarr's sharding codec
        writes for it (inner chunks of ``chunk_rows`` rows, zero-padded at the array's end, each followed by its
        CRC32C; then the (offset, nbytes) index and the index's CRC32C), without zarr's per-chunk machinery,
        which costs more than the bytes on a 2-core box. Zarr reads it back (tests read every store through it)."""
        c, d = min(self.meta["chunk_rows"], self.meta["shard_rows"]), self.meta["d_model"]
        n_inner = -(-self.meta["shard_rows"] // c)
        rows = len(bits)
        index = np.full((n_inner, 2), _NO_CHUNK, dtype="<u8")
        parts, offset = [], 0
        for j in range(-(-rows // c)):
            chunk = bits[j * c:(j + 1) * c]
            if len(chunk) < c:  # the array's last chunk: stored whole, the rows past the end at the fill value
                chunk = np.concatenate([chunk, np.zeros((c - len(chunk), d), np.uint16)])
            data = np.ascontiguousarray(chunk, dtype="<u2").tobytes()
            parts += [data, google_crc32c.value(data).to_bytes(4, "little")]
            index[j] = offset, len(data) + 4
            offset += len(data) + 4
        idx = index.tobytes()
        parts += [idx, google_crc32c.value(idx).to_bytes(4, "little")]
        folder = self.path / name / "c" / str(s)
        folder.mkdir(parents=True, exist_ok=True)
        # a new file renamed over the old one, never rewritten in place: a reader that has the old file open
        # (a shard being re-harvested) keeps the complete old bytes, never a half-written file
        tmp = folder / f".0.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.writelines(parts)
            os.replace(tmp, folder / "0")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def committed(self) -> set[int]:
        return _committed(self.path)

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
                writes.append((_array(layer, readout), bits, slice(a, b)))
                summarise[_stats_key(layer, readout)] = bits
            if layer in token_layers_of(meta):
                writes.append((f"{_layer_key(layer)}/all/s{s:05d}", all_tokens[layer], None))
        try:
            # The checksums run beside the writes and the moments (hashlib releases the GIL for the whole hash); the
            # moments stay on this thread: beside a second thread they measured up to 3× slower on 2 cores
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="uav-sha256") as pool:
                digests = {name: pool.submit(_sha256, bits) for name, bits, _ in writes}
                for name, bits, rows in writes:
                    if rows is None:  # token vectors: one ragged array per shard
                        self.group.create_array(
                            name, shape=bits.shape, dtype="uint16", chunks=(min(max(len(bits), 1), 4096), bits.shape[1]),
                            fill_value=0, overwrite=True, **_codecs(codec_of(meta))).with_config(_WRITE_ALL)[:] = bits
                    elif codec_of(meta) == "raw":
                        self._write_raw_shard(name, s, bits)
                    else:
                        self._array(name)[rows] = bits
                commit["stats"] = {k: _moments(bits, meta["dtype"]) for k, bits in summarise.items()}
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
        commits = [_read_commit(self.path, s) for s in range(self.meta["n_shards"])]
        stats = {key: _merge_moments([c["stats"][key] for c in commits]) for key in commits[0]["stats"]}
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
                             compressors=(ZstdCodec(level=0) if text else _compressor(), Crc32cCodec()),
                             attributes={"sha256": _table_sha256(values)})
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
                       compressors=_compressor())[...] = flat
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
            g.create_array(_array(layer, readout), shape=(n, d), dtype="uint16", chunks=(min(meta["chunk_rows"], R), d),
                           shards=(R, d), fill_value=0, **_codecs(codec_of(meta)))
    (tmp / "_commits").mkdir()


# --------------------------------------------------------------------------------------------------------
# Reading


def _fs(path: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/")


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in _protocols(fs)


def check_range_requests(path: str) -> None:
    """Refuse a web server that ignores HTTP Range requests. Sharded Zarr reads a shard's index and chunks as byte
    ranges of one file; a server that answers every request with the whole file (Python's http.server does) makes
    those reads return wrong bytes, which would surface later as a false "checksum mismatch" or a codec error."""
    fs, root = _fs(path)
    if not {"http", "https"} & set(_protocols(fs)):
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


ROOT_FIX = ("restore zarr.json from a copy of the store; without it the store cannot say what its rows are: delete the "
            "folder and harvest again")


def damaged_root(path: str | Path) -> str | None:
    """What is wrong with the root of a local folder that holds a store's arrays (_commits/, acts/, examples/) but no
    readable uav metadata; None for a healthy store or for a folder that never was one."""
    p = Path(path)
    if "://" in str(path) or not p.is_dir() or _read_meta_or_none(p) is not None:
        return None
    if not any((p / d).is_dir() for d in ("_commits", "acts", "examples")):
        return None
    if not (p / "zarr.json").is_file():
        return "its root zarr.json (the store's metadata) is missing"
    return "its root zarr.json (the store's metadata) is unreadable or holds no uav_store metadata"


def _read_meta_or_none(path: str | Path) -> dict | None:
    fs, root = _fs(path)
    try:
        with fs.open(f"{root}/zarr.json") as f:
            doc = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, IsADirectoryError, NotADirectoryError):
        return None
    meta = doc.get("attributes", {}).get("uav_store")
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _commit_listing(path: str | Path, n_shards: int | None = None) -> tuple[set[int], list[str]]:
    """Committed shard numbers, and stray files in _commits/ (a "s00000 (copy).json" is not a commit; temp files
    of an interrupted commit start with a dot and are neither). A web server need not list folders: with
    ``n_shards`` given, a remote store that lists nothing is asked for each commit file instead."""
    fs, root = _fs(path)
    try:
        names = fs.ls(f"{root}/_commits", detail=False)
    except FileNotFoundError:
        names = []
    if not names and n_shards and not _is_local(fs):
        return {s for s in range(n_shards) if fs.exists(f"{root}/_commits/s{s:05d}.json")}, []
    out, stray = set(), []
    for n in names:
        base = n.rstrip("/").rsplit("/", 1)[-1]
        digits = base[1:-5]
        if base.startswith("s") and base.endswith(".json") and digits.isdigit() and base == f"s{int(digits):05d}.json":
            out.add(int(digits))
        elif not base.startswith("."):
            stray.append(base)
    return out, sorted(stray)


def _committed(path: str | Path) -> set[int]:
    return _commit_listing(path)[0]


def _read_commit(path: str | Path, s: int) -> dict:
    fs, root = _fs(path)
    with fs.open(f"{root}/_commits/s{s:05d}.json") as f:
        return json.load(f)


# eval, probe and explain have no --skip-corrupt: the fix names the one command that has it
_CHUNK_FIX = ("run `uav store verify` on the store, then re-harvest the shard (delete its _commits file, re-run the "
              "harvest); `uav train --skip-corrupt` trains without it")
_NO_CHUNK = 2**64 - 1  # a shard index entry for an inner chunk that was never written (all fill value)


class _RawArray:
    """Rows of one ``raw``-codec activation array of a local store, read straight from its shard files (the layout
    zarr's sharding codec writes: inner chunks, then an index of (offset, nbytes) pairs + CRC32C at the end): no
    decode and no per-call zarr machinery. Each inner chunk's CRC32C is checked the first time it is read
    (committed shards never change). Anything else reads through zarr.

    Two paths, for the two ways stores are read. A span of rows (a streaming reader's chunk) is one ``pread`` per
    inner chunk: nothing mapped, so a streaming reader's memory stays flat however large the store. Scattered rows
    (a random batch) are copied out of the shard files memory-mapped, as Arrow reads its tables: the pages they
    touch are clean page cache, counted in the reader's RSS but reclaimable."""

    MAX_OPEN = 64  # shard files kept open (descriptor, parsed index, map) at once

    def __init__(self, folder: str, arr: zarr.Array):
        self.folder = folder
        self.shard_rows, self.chunk_rows = arr.shards[0], arr.chunks[0]
        self.d = arr.shape[1]
        self.chunk_bytes = self.chunk_rows * self.d * 2
        self.n_inner = -(-self.shard_rows // self.chunk_rows)
        self._open: OrderedDict[int, dict | None] = OrderedDict()
        self._checked: set[tuple[int, int]] = set()

    @classmethod
    def of(cls, path: str, name: str, arr: zarr.Array) -> "_RawArray | None":
        fs, root = _fs(path)
        if not _is_local(fs) or arr.shards is None:
            return None
        want = {"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(arr.chunks), "codecs": [BytesCodec().to_dict(), Crc32cCodec().to_dict()],
            "index_codecs": [BytesCodec().to_dict(), Crc32cCodec().to_dict()], "index_location": "end"}}
        codecs = json.loads(json.dumps([c.to_dict() for c in arr.metadata.codecs]))  # tuples → lists
        if arr.dtype != np.uint16 or codecs != [want]:
            return None
        return cls(f"{root}/{name}", arr)

    def _shard(self, i: int) -> dict | None:
        """Shard file ``i``: its descriptor and inner-chunk index (and map, once scattered rows were read);
        None when the file does not exist (the caller's _require_files has decided those rows are fill value)."""
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        path = f"{self.folder}/c/{i}/0"
        try:
            f = open(path, "rb", buffering=0)  # a file object: closed when dropped, no descriptor leaks
        except FileNotFoundError:
            entry = None
        else:
            size = 16 * self.n_inner + 4
            tail = os.pread(f.fileno(), size, max(os.fstat(f.fileno()).st_size - size, 0))
            if len(tail) != size or google_crc32c.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
                f.close()
                raise UnreadableChunk(f"shard file {path} has a corrupt index (CRC32C mismatch)",
                                      _CHUNK_FIX)
            entry = {"file": f, "index": np.frombuffer(tail[:-4], dtype="<u8").reshape(self.n_inner, 2), "map": None}
        self._open[i] = entry
        if len(self._open) > self.MAX_OPEN:
            self._open.popitem(last=False)
        return entry

    def _where(self, entry: dict, i: int, j: int) -> tuple[int | None, bytes | None]:
        """Byte offset of inner chunk j of shard i (None for a chunk never written) and, the first time the chunk
        is used, its bytes, read whole to check its CRC32C (a caller that needs rows of it uses them)."""
        off, nbytes = (int(v) for v in entry["index"][j])
        if off == _NO_CHUNK or (i, j) in self._checked:
            return (None if off == _NO_CHUNK else off), None
        raw = os.pread(entry["file"].fileno(), nbytes, off)
        if nbytes != self.chunk_bytes + 4 or len(raw) != nbytes \
                or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise UnreadableChunk(f"inner chunk {j} of {self.folder}/c/{i}/0 is corrupt (CRC32C mismatch)",
                                  _CHUNK_FIX)
        self._checked.add((i, j))
        return off, raw

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), one read per inner chunk they cover."""
        out = np.zeros((max(stop - start, 0), self.d), dtype=np.uint16)
        row = start
        while row < stop:
            i, within = divmod(row, self.shard_rows)
            j, lo = divmod(within, self.chunk_rows)
            hi = min(self.chunk_rows, lo + stop - row)
            entry = self._shard(i)
            off, whole = (None, None) if entry is None else self._where(entry, i, j)
            if whole is not None:  # just checked: the rows are in the bytes already read
                out[row - start:row - start + hi - lo] = np.frombuffer(whole, "<u2", self.chunk_rows * self.d) \
                    .reshape(-1, self.d)[lo:hi]
            elif off is not None:
                raw = os.pread(entry["file"].fileno(), (hi - lo) * self.d * 2, off + lo * self.d * 2)
                out[row - start:row - start + hi - lo] = np.frombuffer(raw, dtype="<u2").reshape(-1, self.d)
            row += hi - lo
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Scattered rows, in the order given: one numpy gather per shard file, through a (chunk, row, d) view of
        it (inner chunks lie one after another, each followed by its 4-byte CRC32C)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.d), dtype=np.uint16)
        shard, within = np.divmod(rows, self.shard_rows)
        chunk, local = np.divmod(within, self.chunk_rows)
        for i in np.unique(shard).tolist():
            entry = self._shard(i)
            if entry is None:
                continue
            hit = np.flatnonzero(shard == i)
            written = [j for j in np.unique(chunk[hit]).tolist() if self._where(entry, i, j)[0] is not None]
            if entry["map"] is None:
                entry["map"] = self._view(i, entry)
            keep = hit[np.isin(chunk[hit], written)]
            out[keep] = entry["map"][chunk[keep], local[keep]]
        return out

    def _view(self, i: int, entry: dict) -> np.ndarray:
        """Shard file i (the file already open, whose index was read) memory-mapped as (chunks, chunk_rows, d)
        uint16: chunk j starts j·(chunk bytes + 4) in."""
        index, step = entry["index"], self.chunk_bytes + 4
        written = index[:, 0] != _NO_CHUNK
        if not np.array_equal(index[written, 0], np.flatnonzero(written) * step):  # not the layout uav writes
            raise UnreadableChunk(f"shard file {self.folder}/c/{i}/0 does not lay its chunks out in order",
                                  "read it through zarr: copy the store with `zarr` or re-harvest the shard")
        raw = np.memmap(entry["file"], dtype=np.uint8, mode="r")
        n = int(np.flatnonzero(written).max()) + 1 if written.any() else 0  # the view ends at the last written chunk
        if n * step > len(raw):
            raise UnreadableChunk(f"shard file {self.folder}/c/{i}/0 is shorter than its index says",
                                  _CHUNK_FIX)
        return np.lib.stride_tricks.as_strided(raw[: n * step].view("<u2"), shape=(n, self.chunk_rows, self.d),
                                               strides=(step, 2 * self.d, 2), writeable=False)


class UnreadableChunk(UavError):
    """A shard's data file is gone (zarr would read it back as the fill value, zeros, without a word) or fails its
    CRC32C. Reads refuse it; a trainer with --skip-corrupt skips it like any garbled chunk."""


class Store:
    """Read side of a store, local path or fsspec URL. Only committed shards are visible."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        meta = _read_meta_or_none(path)
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
        self._raw: dict[str, _RawArray | None] = {}
        self._complete_remote: list[int] | None = None

    # ---- plan
    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def n_rows(self) -> int:
        return self.meta["n_rows"]

    def refresh(self) -> None:
        fresh = _read_meta_or_none(self.path)
        if fresh is not None:
            self.meta = fresh

    def committed(self) -> list[int]:
        if self._complete_remote is not None:
            return self._complete_remote
        shards = sorted(_commit_listing(self.path, self.meta["n_shards"])[0])
        if self.meta.get("complete") and not _is_local(_fs(self.path)[0]):
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
            raise UavError(f"table {name} of store {self.path} is unreadable ({type(e).__name__}: {e})",
                           f"run `uav store verify {self.path}`; a damaged table needs a new harvest") from e

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
            fs, root = _fs(self.path)
            if not fs.exists(f"{root}/{key}"):
                s = i if "/all/" not in name else int(name.rsplit("/s", 1)[1])
                a, b = self.shard_range(s)
                try:
                    want = _read_commit(self.path, s)["sha256"].get(name)
                except FileNotFoundError:
                    continue  # not committed: not visible, nothing to vouch for
                except json.JSONDecodeError:
                    want = None
                if want is None or _sha256(arr[a:b] if "/all/" not in name else arr[:]) != want:
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
        name = _array(layer, readout)
        self._require_files(name, rows)
        if name not in self._raw:
            self._raw[name] = _RawArray.of(self.path, name, self.group[name])
        if self._raw[name] is not None:  # a local raw store: straight from the shard files
            raw = self._raw[name]
            bits = raw.span(span.start, span.start + len(rows)) if span is not None else raw.rows(rows)
        else:
            try:
                bits = self.group[name][span] if span is not None else \
                    self.group[name].get_orthogonal_selection((rows, slice(None)))
            except Exception as e:  # noqa: BLE001 - a CRC32C mismatch or a garbled chunk, as a codec error
                shards = sorted({self.shard_of(int(r)) for r in rows})
                raise UnreadableChunk(f"{name} of store {self.path} is unreadable in shard(s) {shards} "
                                      f"({type(e).__name__}: {e})", _CHUNK_FIX) from e
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
        Stores written before windows existed keep every token: start 0, offsets = tokens/offsets."""
        if not hasattr(self, "_pos"):
            if self.token_width == 0:
                raise UavError(f"{self.path} holds pooled read-outs only (positions={self.meta['positions']})",
                               "re-harvest with --positions all or --positions window:W (e.g. window:32)")
            if "positions/start" in self.group:
                self._pos = (self.group["positions/start"][:], self.group["positions/offsets"][:])
            else:
                self._pos = (np.zeros(self.n_rows, dtype=np.int32), self.group["tokens/offsets"][:])
        return self._pos

    def stored_positions(self, row: int) -> np.ndarray:
        """The token positions (indices into the row's token ids) whose vectors the store holds for ``row``."""
        start, off = self._positions()
        return np.arange(int(start[row]), int(start[row]) + int(off[row + 1] - off[row]))

    def has_spans(self) -> bool:
        """Whether the store records each token's characters (stores harvested before spans existed do not)."""
        return "tokens/spans" in self.group

    def char_spans(self, start: int, stop: int) -> list[np.ndarray]:
        """Per row of [start, stop): (n_tokens, 2) character [begin, end) of each token in the row's text, [-1, -1]
        for tokens that are not part of it (BOS, chat template). Refused for stores harvested before spans."""
        if not self.has_spans():
            raise UavError(f"store {self.path} does not record where each token sits in its text (harvested by an "
                           "older uav)", "re-harvest it (a new --out) to train or evaluate on text windows")
        off = self.group["tokens/offsets"][start:stop + 1]
        flat = self.group["tokens/spans"][int(off[0]):int(off[-1])]
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
        name = f"{_layer_key(layer)}/all/s{s:05d}"
        self._require_files(name, np.arange(lo, hi))
        block = from_bits(self.group[name][lo:hi], self.meta["dtype"])
        return [block[int(off[r]) - base - lo:int(off[r + 1]) - base - lo] for r in range(start, stop)]

    def read_tokens(self, layer: str, row: int) -> torch.Tensor:
        """The stored token vectors of one row (every token for positions=all; the row's window for window:W)."""
        return self.read_token_rows(layer, row, row + 1)[0]

    def stats(self, layer: str, readout: str = "last") -> dict:
        """Per-layer mean/std/norm stats of one read-out over all rows; merged from the commits when the store
        is not finalized yet."""
        self.check_layer(layer)
        self.check_readout(readout)
        key = _stats_key(layer, readout)
        if "stats" in self.meta:
            return self.meta["stats"][key]
        commits = [_read_commit(self.path, s) for s in self.committed()]
        if not commits:
            raise UavError(f"{self.path} has no committed shards yet", "wait for the harvest, or run it")
        return _merge_moments([c["stats"][key] for c in commits])

    # ---- checks
    def verify(self) -> list[str]:
        """Every shard committed, every array readable with the right shape and dtype, finite, and equal to
        its commit checksum. Returns the problems found, each naming the broken shard and file."""
        problems: list[str] = []
        m = self.meta
        for s in range(m["n_shards"]):
            a, b = self.shard_range(s)
            try:
                c = _read_commit(self.path, s)
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
                    problems.append(f"shard {s}: {where} unreadable ({type(e).__name__}: {e})")
                    continue
                if bits.dtype != np.uint16 or bits.shape[-1] != m["d_model"]:
                    problems.append(f"shard {s}: {name} has {bits.shape} {bits.dtype}, want (*, {m['d_model']}) uint16")
                    continue
                if _sha256(bits) != want:
                    hint = " (chunk missing: read back as fill value)" if not bits.any() else ""
                    problems.append(f"shard {s}: {where} checksum mismatch{hint}")
                    continue
                x = from_bits(bits, m["dtype"])
                if not torch.isfinite(x).all():
                    problems.append(f"shard {s}: {name} holds NaN/inf")
        problems += self.check_tables()
        committed, stray = _commit_listing(self.path, m["n_shards"])
        problems += [f"_commits/{n} is not a commit file (a copy?): remove it" for n in stray]
        problems += [f"_commits/s{s:05d}.json commits shard {s}, but the store has {m['n_shards']} shards"
                     for s in sorted(committed) if s >= m["n_shards"]]
        return problems

    def check_tables(self) -> list[str]:
        """Every table (:data:`TABLES`): each chunk file present, decodable and equal to the table's checksum (stores
        written since tables carry one), and the tables consistent with each other (records parse and carry their
        row's id, splits are known, token offsets agree with the counts). The problems found, each naming its file."""
        problems: list[str] = []
        values: dict[str, np.ndarray] = {}
        fs, root = _fs(self.path)
        local = _is_local(fs)
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
                if not (Path(root) / key).is_file() and (want or name not in _FILL_IS_VALID):
                    problems.append(f"table {name}: chunk file {key} is missing (rows {i * c}-{min(n, (i + 1) * c) - 1})")
                    bad = True
            try:
                v = arr[:]
            except Exception as e:  # noqa: BLE001 - a CRC32C mismatch or a garbled chunk surfaces as a codec error
                problems.append(f"table {name} is unreadable ({type(e).__name__}: {e})")
                continue
            if want and not bad and _table_sha256(v) != want:
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
    """What the tables that read back whole (``t``) say against each other: this catches damage a store written
    before tables carried checksums cannot show otherwise (a lost chunk reads back as empty strings or zeros)."""
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
