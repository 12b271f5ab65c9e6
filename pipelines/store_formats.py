"""Bench section 2: the activation store against the formats activations are also kept in (safetensors shards, a
`datasets` Arrow dataset, a raw .npy), on the same rows: size, write and read MB/s, random 256-row batches/s. Reads
right after writes come from the page cache, so the read columns compare formats' decode cost, not disks.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipelines.measure import ROUNDS, bits_of, create_synthetic_store, dir_bytes, fill_synthetic_store, timed, with_range
from uav_cache.store import DEFAULT_CODEC, STORAGE_DTYPES, Store


def _random_batches(n: int, batch: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, size=min(batch, n), replace=False)) for _ in range(count)]


def _fmt_zarr(dir_: Path, bits: np.ndarray, dtype: str, batches: list[np.ndarray], codec: str = "raw") -> dict:
    """Write MB/s counts the activations' shard writes, commits and finalize (what the harvest's writer thread
    must sustain, and all the other formats write); the examples/token tables a store is created with are timed
    apart (``create_s``)."""
    path = dir_ / "zarr"
    t_c, writer = timed(lambda: create_synthetic_store(path, len(bits), bits.shape[1], dtype, codec=codec))
    t_w, _ = timed(lambda: fill_synthetic_store(writer, bits))
    st = Store(path)
    step = st.meta["shard_rows"]
    t_r, _ = timed(lambda: [st.read_last("bench", a, min(a + step, len(bits))) for a in range(0, len(bits), step)])
    t_b, _ = timed(lambda: [st.read_rows("bench", b) for b in batches])
    assert np.array_equal(st.read_rows("bench", batches[0]).view(torch.int16).numpy().view(np.uint16), bits[batches[0]])
    return {"bytes": dir_bytes(path / "acts"), "write_s": t_w, "read_s": t_r, "batches_s": t_b, "create_s": t_c}


def _fmt_safetensors(dir_: Path, bits: np.ndarray, dtype: str, batches: list[np.ndarray], shard_rows: int = 4096) -> dict:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = dir_ / "safetensors"
    path.mkdir()
    x = torch.from_numpy(bits.view(np.int16)).view(STORAGE_DTYPES[dtype])

    def write():
        for k, a in enumerate(range(0, len(bits), shard_rows)):
            save_file({"x": x[a:a + shard_rows].contiguous()}, str(path / f"shard_{k:05d}.safetensors"))

    t_w, _ = timed(write)
    files = sorted(path.glob("*.safetensors"))
    t_r, _ = timed(lambda: [safe_open(str(f), "pt").get_tensor("x") for f in files])
    handles = [safe_open(str(f), "pt").get_slice("x") for f in files]

    def random_reads():
        for b in batches:
            torch.cat([handles[r // shard_rows][r % shard_rows:r % shard_rows + 1] for r in b.tolist()])

    t_b, _ = timed(random_reads)
    return {"bytes": dir_bytes(path), "write_s": t_w, "read_s": t_r, "batches_s": t_b}


def _fmt_arrow(dir_: Path, bits: np.ndarray, dtype: str, batches: list[np.ndarray]) -> dict:
    """A Hugging Face `datasets` Arrow dataset (Dataset.from_dict + save_to_disk), as SAELens caches
    activations. Arrow has no bfloat16, so both dtypes are stored as their uint16 bit patterns."""
    import pyarrow as pa
    from datasets import Dataset, load_from_disk

    path = dir_ / "arrow"
    n, d = bits.shape

    def write():
        col = pa.FixedSizeListArray.from_arrays(pa.array(bits.reshape(-1)), d)
        Dataset.from_dict({"x": col}).save_to_disk(str(path))

    t_w, _ = timed(write)
    ds = load_from_disk(str(path)).with_format("numpy")
    step = 4096
    t_r, _ = timed(lambda: [ds[a:a + step]["x"] for a in range(0, n, step)])
    t_b, _ = timed(lambda: [ds[b]["x"] for b in batches])
    return {"bytes": dir_bytes(path), "write_s": t_w, "read_s": t_r, "batches_s": t_b}


def _fmt_npy(dir_: Path, bits: np.ndarray, dtype: str, batches: list[np.ndarray]) -> dict:
    path = dir_ / "raw.npy"
    t_w, _ = timed(lambda: np.save(path, bits))
    t_r, _ = timed(lambda: np.load(path))
    mm = np.load(path, mmap_mode="r")
    t_b, _ = timed(lambda: [np.asarray(mm[b]) for b in batches])
    return {"bytes": dir_bytes(path), "write_s": t_w, "read_s": t_r, "batches_s": t_b}


FORMATS = {"zarr (uav, raw)": _fmt_zarr, "zarr (uav, zstd)": lambda *a: _fmt_zarr(*a, codec="zstd"),
           "safetensors": _fmt_safetensors, "arrow (datasets)": _fmt_arrow, "raw .npy": _fmt_npy}
DEFAULT_FORMAT = f"zarr (uav, {DEFAULT_CODEC})"


def compare_formats(rows: np.ndarray, work: Path, dtypes=("fp16", "bf16"), n_batches: int = 20,
                    batch: int = 256, formats: dict | None = None, repeats: int = ROUNDS) -> list[dict]:
    """Each format × dtype on the same rows: size ÷ raw size, write/read MB/s (of raw bytes), random batches/s.
    Each measurement is the median of ``repeats`` rounds, the formats taking turns within a round, so a busy
    moment of a shared machine does not land on one format alone; one unmeasured round first warms every format
    (imports, thread pools, allocator), so none pays it inside the clock."""
    out = []
    batches = _random_batches(len(rows), batch, n_batches)
    for di, dtype in enumerate(dtypes):
        bits = bits_of(rows, dtype)
        raw = bits.nbytes
        runs: dict[str, list[dict]] = {}
        for r in range(repeats + (di == 0)):
            for name, fn in (formats or FORMATS).items():
                d = Path(tempfile.mkdtemp(dir=work, prefix="fmt-"))
                try:
                    m = fn(d, bits, dtype, batches)
                    if r or di:  # round 0 of the first dtype is the warm-up
                        runs.setdefault(name, []).append(m)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
        mb = raw / 1e6
        for name, ms in runs.items():
            med = {k: float(np.median([m[k] for m in ms])) for k in ms[0]}
            out.append({"format": name, "dtype": dtype, "rows": len(rows), "raw_bytes": raw, "bytes": int(med["bytes"]),
                        "size_ratio": med["bytes"] / raw, "write_mb_s": mb / med["write_s"], "read_mb_s": mb / med["read_s"],
                        "batches_per_s": len(batches) / med["batches_s"], "repeats": repeats,
                        # per round, so a ratio of two formats is taken within a round (store_claims)
                        "write_mb_s_rounds": [mb / m["write_s"] for m in ms],
                        "batches_per_s_rounds": [len(batches) / m["batches_s"] for m in ms],
                        **({"create_s": med["create_s"]} if "create_s" in med else {})})
    return out


def store_claims(formats: list[dict]) -> dict:
    """The writer and reader claims, from one compare_formats run: the default codec's write MB/s and its random
    256-row batches/s ÷ Arrow's (Arrow's batches of the same round), each the worse of the two dtypes; the median
    over rounds with its min–max."""
    by = {(r["format"], r["dtype"]): r for r in formats}
    dtypes = sorted({r["dtype"] for r in formats})
    ours = [by[(DEFAULT_FORMAT, d)] for d in dtypes]
    if "write_mb_s_rounds" not in ours[0]:  # results that keep no rounds
        return {"writer_mb_s": min(r["write_mb_s"] for r in ours),
                "batches_vs_arrow": min(by[(DEFAULT_FORMAT, d)]["batches_per_s"] / by[("arrow (datasets)", d)]["batches_per_s"]
                                        for d in dtypes),
                "create_s": max(r["create_s"] for r in ours), "rows": ours[0]["rows"]}
    n = len(ours[0]["write_mb_s_rounds"])
    writer = [min(r["write_mb_s_rounds"][i] for r in ours) for i in range(n)]
    vs = [min(by[(DEFAULT_FORMAT, d)]["batches_per_s_rounds"][i] / by[("arrow (datasets)", d)]["batches_per_s_rounds"][i]
              for d in dtypes) for i in range(n)]
    return {**with_range("writer_mb_s", writer), **with_range("batches_vs_arrow", vs),
            "create_s": max(r["create_s"] for r in ours), "rows": ours[0]["rows"]}
