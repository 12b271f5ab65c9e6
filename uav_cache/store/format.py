"""The store's on-disk format (docs/store-format.md): what identifies a store, how its arrays are named and encoded,
its tables, its root metadata and commit files, the stored bit patterns and the per-shard statistics. The writer
and the readers of the package share these, so no other module names a store's arrays.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from uav_cache import __version__
from uav_cache.errors import UavError
from uav_cache.store.readouts import readouts_of, token_layers_of

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
# identity keys a format-1 store's metadata may lack: such a store still opens and resumes (unknown, not different)
LATER_IDENTITY_KEYS = ("compute_dtype", "token_layers")

# How the activation arrays' inner chunks are encoded. The choice trades size for speed (`make bench` shows both):
# activations barely compress, while decoding is what limits a trainer's random reads. "raw" is the default:
# uncompressed, every inner chunk carrying a CRC32C that zarr checks on read and that uav's direct reader checks once
# per chunk, so corruption is still caught. "zstd" (Blosc zstd-3, byte shuffle; what a format-1 store without a
# `codec` key holds) is for stores shipped over a network, where bytes cost more than CPU.
CODECS = {
    "raw": "uncompressed, CRC32C per inner chunk: fastest writes and random reads (read directly, no decode)",
    "zstd": "Blosc zstd level 3 with byte shuffle: 7% smaller for fp16, 22% for bf16; slower writes and reads",
}
DEFAULT_CODEC = "raw"


def compressor() -> BloscCodec:
    """Byte shuffle + zstd: of the lossless codecs, the best ratio on real fp16/bf16 activations (bitshuffle gains
    nothing on them)."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def codecs(codec: str) -> dict:
    """create_array keyword arguments for an activation array encoded with ``codec``."""
    if codec == "raw":
        return {"serializer": BytesCodec(), "compressors": Crc32cCodec()}
    if codec == "zstd":  # a CRC32C after the compressor: a flipped byte is named on read, not decoded silently
        return {"compressors": (compressor(), Crc32cCodec())}
    raise UavError(f"unknown store codec {codec!r}", f"use one of: {', '.join(CODECS)}")


def codec_of(meta: dict) -> str:
    """The codec of a store's activation arrays (a format-1 store without a ``codec`` key is zstd)."""
    return meta.get("codec", "zstd")


# The tables written once, when a store is created (docs/store-format.md §1): `uav store verify` checks each of them,
# and training and evaluation refuse a store whose tables are damaged before any work starts.
TABLES = ("examples/id", "examples/split", "examples/task", "examples/source", "examples/record", "examples/n_tokens",
          "examples/truncated", "tokens/offsets", "tokens/ids")
# tables only some stores have (token positions, token character spans): checked when present
OPTIONAL_TABLES = ("positions/start", "positions/offsets", "tokens/spans")
# tables whose fill value is a valid entry: a format-1 table without a sha256 attribute may lack an all-fill chunk,
# since zarr writes none for it (positions/start is 0 for every row of a `--positions all` store)
FILL_IS_VALID = ("examples/task", "examples/source", "examples/truncated", "positions/start")


def layer_key(layer: str) -> str:
    """The group of one layer's arrays: its read-outs, and its token vectors under ``all/``."""
    return f"acts/{layer}"


def array_name(layer: str, readout: str) -> str:
    """The (n_rows, d) array of one layer's read-out."""
    return f"{layer_key(layer)}/{readout}"


def tokens_name(layer: str, shard: int) -> str:
    """The token vectors one shard keeps of one layer (a ragged array per shard)."""
    return f"{layer_key(layer)}/all/s{shard:05d}"


def stats_key(layer: str, readout: str) -> str:
    """Commit/metadata stats are keyed by layer for ``last`` (as in every format-1 store), ``layer@readout`` else."""
    return layer if readout == "last" else f"{layer}@{readout}"


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


def _identity(meta: dict, k: str) -> Any:
    if k == "readouts":
        return readouts_of(meta)
    return token_layers_of(meta) if k == "token_layers" else meta.get(k)


def diff_identity(have: dict, want: dict) -> list[str]:
    """The identity keys on which two stores' metadata differ, each as one phrase (a key one side lacks and that a
    format-1 store may lack is unknown, not different)."""
    return [f"{k}: store has {_identity(have, k)!r}, this run has {_identity(want, k)!r}" for k in IDENTITY_KEYS
            if _identity(have, k) != _identity(want, k) and (k in have or k not in LATER_IDENTITY_KEYS)]


# ---------------------------------------------------------------------------------------------- the stored values


def to_bits(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Activations → the uint16 bit patterns we store (zarr has no bfloat16; the round trip is exact)."""
    return x.detach().to(STORAGE_DTYPES[dtype]).contiguous().view(torch.int16).cpu().numpy().view(np.uint16)


def from_bits(bits: np.ndarray, dtype: str) -> torch.Tensor:
    """uint16 bit patterns → a tensor of the logical dtype."""
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(STORAGE_DTYPES[dtype])


def sha256(a: np.ndarray) -> str:
    """An array's checksum as the commit files record it: its bytes (read in place, not copied)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def table_sha256(values: np.ndarray) -> str:
    """A table's checksum: its values' bytes, or for strings each one's UTF-8 bytes after its length."""
    if values.dtype.kind not in "OT":
        return sha256(values)
    h = hashlib.sha256()
    for v in values.tolist():
        b = v.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _decode_np(bits: np.ndarray, dtype: str) -> np.ndarray:
    """uint16 bit patterns → float32 values in numpy (exact for fp16 and bf16)."""
    if dtype == "fp16":
        return bits.view(np.float16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def moments(bits: np.ndarray, dtype: str, block: int = 512) -> dict:
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


def merge_moments(parts: list[dict]) -> dict:
    """Per-shard :func:`moments` → one layer's mean, std, norm and peak over every row."""
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


# ---------------------------------------------------------------------------------------------- a store's files


def fs_of(path: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system a store path or URL lives on, and the store's root in it."""
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/")


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in protocols(fs)


ROOT_FIX = ("restore zarr.json from a copy of the store; without it the store cannot say what its rows are: delete the "
            "folder and harvest again")


def read_meta(path: str | Path) -> dict | None:
    """A store's root metadata (zarr.json's uav_store attributes); None where there is no store, or no readable one."""
    fs, root = fs_of(path)
    try:
        with fs.open(f"{root}/zarr.json") as f:
            doc = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, IsADirectoryError, NotADirectoryError):
        return None
    meta = doc.get("attributes", {}).get("uav_store")
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def damaged_root(path: str | Path) -> str | None:
    """What is wrong with the root of a local folder that holds a store's arrays (_commits/, acts/, examples/) but no
    readable uav metadata; None for a healthy store or for a folder that never was one."""
    p = Path(path)
    if "://" in str(path) or not p.is_dir() or read_meta(p) is not None:
        return None
    if not any((p / d).is_dir() for d in ("_commits", "acts", "examples")):
        return None
    if not (p / "zarr.json").is_file():
        return "its root zarr.json (the store's metadata) is missing"
    return "its root zarr.json (the store's metadata) is unreadable or holds no uav_store metadata"


def commit_listing(path: str | Path, n_shards: int | None = None) -> tuple[set[int], list[str]]:
    """Committed shard numbers, and stray files in _commits/ (a "s00000 (copy).json" is not a commit; temp files
    of an interrupted commit start with a dot and are neither). A web server need not list folders: with
    ``n_shards`` given, a remote store that lists nothing is asked for each commit file instead."""
    fs, root = fs_of(path)
    try:
        names = fs.ls(f"{root}/_commits", detail=False)
    except FileNotFoundError:
        names = []
    if not names and n_shards and not is_local(fs):
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


def read_commit(path: str | Path, s: int) -> dict:
    """Shard ``s``'s commit file: its rows, checksums and statistics."""
    fs, root = fs_of(path)
    with fs.open(f"{root}/_commits/s{s:05d}.json") as f:
        return json.load(f)


_BYTES = r"(b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")"  # a bytes object as repr() writes it
_CRC_MISMATCH = re.compile(rf"Stored and computed checksum do not match\. Stored: {_BYTES}\. Computed: {_BYTES}")


def why_unreadable(e: Exception) -> str:
    """Why a chunk did not read, in one phrase: a CRC32C mismatch as its two checksums in hex (zarr's message gives
    them as raw bytes), anything else as the error's type and message."""
    m = _CRC_MISMATCH.search(str(e))
    if m is None:
        return f"{type(e).__name__}: {e}"
    stored, computed = (int.from_bytes(ast.literal_eval(g), "little") for g in m.groups())
    return f"CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"


# eval, probe and explain have no --skip-corrupt: the fix names the one command that has it
CHUNK_FIX = ("run `uav store verify` on the store, then re-harvest the shard (delete its _commits file, re-run the "
             "harvest); `uav train --skip-corrupt` trains without it")


class UnreadableChunk(UavError):
    """A shard's data file is gone (zarr would read it back as the fill value, zeros, without a word) or fails its
    CRC32C. Reads refuse it; a trainer with --skip-corrupt skips it like any garbled chunk."""
