"""The bench's pure helpers on tiny arrays (no models): the format comparison and the synthetic store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uav_cache.store import Store, from_bits
from pipelines import measure, store_formats


def _real(n: int = 50, d: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32) * 3


def test_synthetic_rows_are_perturbed_copies_of_real_rows():
    real = _real()
    rows = measure.synthetic_rows(real, 300, seed=1)
    assert rows.shape == (300, 32) and rows.dtype == np.float32
    assert len({r.tobytes() for r in rows}) == 300  # no two rows identical
    nearest = np.abs(rows[:, None, :] / real[None, :, :] - 1).max(-1).min(1)  # within ~1% of some real row
    assert np.median(nearest) < 0.1


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_write_synthetic_store_round_trips(tmp_path, dtype, codec):
    bits = measure.bits_of(measure.synthetic_rows(_real(), 100), dtype)
    measure.write_synthetic_store(tmp_path / "s", bits, dtype, shard_rows=32, chunk_rows=16, codec=codec)
    s = Store(tmp_path / "s")
    assert s.meta["codec"] == codec
    assert s.meta["complete"] and s.verify() == [] and s.meta["n_shards"] == 4
    assert torch.equal(s.read_last("bench", 0, 100), from_bits(bits, dtype))


def test_compare_formats_sizes_and_throughputs(tmp_path):
    rows = measure.synthetic_rows(_real(), 600)
    res = store_formats.compare_formats(rows, tmp_path, n_batches=3, batch=16, repeats=2)
    assert {(r["format"], r["dtype"]) for r in res} == {(f, d) for f in store_formats.FORMATS for d in ("fp16", "bf16")}
    for r in res:
        assert r["raw_bytes"] == 600 * 32 * 2 and r["bytes"] > 0 and r["size_ratio"] > 0
        assert r["write_mb_s"] > 0 and r["read_mb_s"] > 0 and r["batches_per_s"] > 0
        assert r["size_ratio"] == pytest.approx(r["bytes"] / r["raw_bytes"])
    npy = [r for r in res if r["format"] == "raw .npy"]
    assert all(r["size_ratio"] == pytest.approx(1.0, abs=0.02) for r in npy)  # the header is all it adds
    st = [r for r in res if r["format"] == "safetensors"]
    assert all(r["size_ratio"] == pytest.approx(1.0, abs=0.05) for r in st)
    assert list(tmp_path.iterdir()) == []  # every format's files are removed after measuring


def test_dir_bytes_counts_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1234")
    (tmp_path / "y").write_bytes(b"12")
    assert measure.dir_bytes(tmp_path) == 6 and measure.dir_bytes(tmp_path / "y") == 2


def test_store_claims_take_the_default_codec_and_the_worse_dtype():
    row = lambda f, d, w, b: {"format": f, "dtype": d, "write_mb_s": w, "batches_per_s": b, "rows": 10, "create_s": 0.1}  # noqa: E731
    res = [row(store_formats.DEFAULT_FORMAT, "fp16", 500, 900), row(store_formats.DEFAULT_FORMAT, "bf16", 400, 700),
           row("zarr (uav, zstd)", "fp16", 100, 30), row("arrow (datasets)", "fp16", 800, 600),
           row("arrow (datasets)", "bf16", 800, 800)]
    c = store_formats.store_claims(res)
    assert c["writer_mb_s"] == 400 and c["batches_vs_arrow"] == pytest.approx(700 / 800)


def test_a_ratio_is_the_median_of_its_rounds_printed_with_its_range():
    r = measure.with_range("harvest_overhead", [0.9, 1.02, 0.97])
    assert r == {"harvest_overhead": 0.97, "harvest_overhead_range": [0.9, 1.02], "rounds": 3}
    assert measure.ranged(r, "harvest_overhead") == "0.97 (0.90–1.02)"
    assert measure.ranged({"x": 1.5}, "x") == "1.50"  # results without ranges


def test_store_claims_take_each_round_against_arrow_in_the_same_round():
    row = lambda f, d, w, b: {"format": f, "dtype": d, "write_mb_s": float(np.median(w)),  # noqa: E731
                              "batches_per_s": float(np.median(b)), "write_mb_s_rounds": w, "batches_per_s_rounds": b,
                              "rows": 10, "create_s": 0.1}
    res = [row(store_formats.DEFAULT_FORMAT, "fp16", [500, 300, 400], [900, 400, 800]),
           row(store_formats.DEFAULT_FORMAT, "bf16", [450, 350, 380], [800, 500, 700]),
           row("arrow (datasets)", "fp16", [1, 1, 1], [600, 200, 800]),
           row("arrow (datasets)", "bf16", [1, 1, 1], [400, 500, 700])]
    c = store_formats.store_claims(res)
    assert c["writer_mb_s"] == 380 and c["writer_mb_s_range"] == [300, 450]  # worse dtype per round: 450, 300, 380
    assert c["batches_vs_arrow"] == pytest.approx(1.0) and c["batches_vs_arrow_range"] == pytest.approx([1.0, 1.5])
