"""What `uav bench` and `uav gpu-check` measure with: a timed call, the spread of repeated rounds (every ratio is
reported as its median with the min–max), sizes on disk, and synthetic stores written through the real StoreWriter
from rows shaped like real activations.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from uav_cache.store import DEFAULT_CODEC, StoreWriter, new_meta, to_bits

ROUNDS = 3  # interleaved rounds behind every ratio (median, min, max)


def spread(values: list[float]) -> dict:
    """median, min and max of one ratio's rounds."""
    v = [float(x) for x in values]
    return {"median": float(np.median(v)), "min": min(v), "max": max(v), "rounds": len(v)}


def with_range(key: str, values: list[float]) -> dict:
    """``{key: median, key_range: [min, max], rounds}``: a ratio as every measurement reports it."""
    s = spread(values)
    return {key: s["median"], f"{key}_range": [s["min"], s["max"]], "rounds": s["rounds"]}


def ranged(results: dict, key: str, digits: int = 2) -> str:
    """`1.02 (0.98–1.05)`, or the median alone for results without ranges."""
    lo_hi = results.get(f"{key}_range")
    v = results[key]
    return f"{v:.{digits}f}" + (f" ({lo_hi[0]:.{digits}f}–{lo_hi[1]:.{digits}f})" if lo_hi else "")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def dir_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_synthetic_store(path: Path, bits: np.ndarray, dtype: str, examples: list[dict] | None = None,
                          shard_rows: int = 4096, chunk_rows: int = 512, codec: str = DEFAULT_CODEC) -> StoreWriter:
    """Rows (uint16 bit patterns) through our StoreWriter; ``examples`` default to tiny train-split records."""
    writer = create_synthetic_store(path, len(bits), bits.shape[1], dtype, examples, shard_rows, chunk_rows, codec)
    fill_synthetic_store(writer, bits)
    return writer


def create_synthetic_store(path: Path, n: int, d: int, dtype: str, examples: list[dict] | None = None,
                           shard_rows: int = 4096, chunk_rows: int = 512, codec: str = DEFAULT_CODEC) -> StoreWriter:
    """An empty store for n synthetic rows: the layout and the examples/token tables a harvest writes first."""
    meta = new_meta(donor="bench", family="bench", weights_fingerprint="0" * 64, layers=["bench"], positions="last",
                    readouts=["last"], dtype=dtype, compute_dtype="fp32", d_model=d, tokenizer={"name": "bench"},
                    donor_input="raw", max_length=0, dataset_fingerprint="0" * 64, n_rows=n, shard_rows=shard_rows,
                    chunk_rows=min(chunk_rows, shard_rows), codec=codec, n_tokens=n,
                    dataset={"name": "bench", "fingerprint": "0" * 64, "split_sizes": {"train": n}, "n_examples": n})
    ex = examples or [{"id": f"r{i}", "text": f"row {i}", "split": "train"} for i in range(n)]
    return StoreWriter.create_or_open(path, meta, ex, [[1]] * n, [False] * n)


def fill_synthetic_store(writer: StoreWriter, bits: np.ndarray) -> None:
    """Every shard written and committed, then the store finalized: what a harvest's writer thread does."""
    for s in range(writer.meta["n_shards"]):
        a, b = writer.shard_range(s)
        writer.write_shard(s, {"bench": bits[a:b]})
    writer.finalize()


def synthetic_rows(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n float32 rows made from real activation rows: tiled, each copy perturbed by 1% multiplicative noise
    (so compressors see realistic mantissas, not repeated rows)."""
    rng = np.random.default_rng(seed)
    rows = real[rng.integers(0, len(real), n)].astype(np.float32)
    return rows * (1 + 0.01 * rng.standard_normal(rows.shape, dtype=np.float32))


def bits_of(rows: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows → the uint16 bit patterns a store of ``dtype`` holds."""
    return to_bits(torch.from_numpy(rows), dtype)
