"""The activation-store format (uav_cache.store): round trips, metadata, commit visibility, refusals, verify."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from uav_cache import store as st
from uav_cache.store import format as layout, writer
from uav_cache.store.raw import RawArray
from uav_cache.errors import UavError
from uav_cache.store import FORMAT, FORMAT_VERSION, Store, StoreWriter, check_compatible, from_bits, to_bits

D = 16
LAYERS = ["model.layers.1", "model.layers.3"]


def _examples(n: int) -> list[dict]:
    return [{"id": f"ex{i:03d}", "text": f"text number {i}", "task": "gist", "source": "synthetic",
             "split": ("train", "val", "test")[i % 3], "qa": [{"question": "q?", "answer": str(i)}]}
            for i in range(n)]


def _token_ids(n: int) -> list[list[int]]:
    return [list(range(100 + i, 100 + i + 2 + i % 5)) for i in range(n)]


def _meta(n: int = 40, shard_rows: int = 8, dtype: str = "fp16", layers=LAYERS, positions: str = "last",
          **over) -> dict:
    ex = _examples(n)
    sizes = {s: sum(e["split"] == s for e in ex) for s in ("train", "val", "test")}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "uav_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00", "donor": "synthetic-donor", "family": "llama",
        "weights_fingerprint": "w" * 64, "n_layers": 4, "layers": list(layers), "positions": positions,
        "dtype": dtype, "d_model": D,
        "tokenizer": {"name": "tok", "vocab_sha256": "v" * 64, "special_tokens_sha256": "s" * 64,
                      "chat_template_sha256": None},
        "donor_input": "raw", "max_length": 64,
        "dataset": {"name": "synthetic", "fingerprint": "f" * 64, "split_sizes": sizes, "n_examples": n},
        "dataset_fingerprint": "f" * 64, "n_rows": n, "shard_rows": shard_rows, "chunk_rows": 4,
        "n_shards": (n + shard_rows - 1) // shard_rows, "n_tokens": sum(map(len, _token_ids(n))),
    }
    meta.update(over)
    return meta


def _open(path: Path, meta: dict) -> StoreWriter:
    n = meta["n_rows"]
    return StoreWriter.create_or_open(path, meta, _examples(n), _token_ids(n), [i % 7 == 0 for i in range(n)])


def _values(n: int, dtype: str, seed: int, layer: int = 0) -> torch.Tensor:
    """Random finite values spanning the dtype's range, including -0.0, subnormals and the largest finite."""
    g = torch.Generator().manual_seed(seed * 100 + layer)
    x = torch.randn(n, D, generator=g) * torch.exp2(torch.randint(-20, 12, (n, D), generator=g).float())
    x[0, 0], x[0, 1] = -0.0, 1e-7  # negative zero; a subnormal in fp16
    x[0, 2] = 65504.0 if dtype == "fp16" else 3.0e38
    return x.to(st.STORAGE_DTYPES[dtype])


def _fill(w: StoreWriter, shards=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write (and commit) the given shards with deterministic values; returns every layer's full tensor."""
    m = w.meta
    full = {layer: _values(m["n_rows"], m["dtype"], seed, k) for k, layer in enumerate(m["layers"])}
    for s in (range(m["n_shards"]) if shards is None else shards):
        a, b = w.shard_range(s)
        w.write_shard(s, {layer: to_bits(full[layer][a:b], m["dtype"]) for layer in m["layers"]})
    return full


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy()


# ---------------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_round_trip_bit_identical(tmp_path, dtype):
    path = tmp_path / "store"
    w = _open(path, _meta(n=37, dtype=dtype))  # 37 rows: the last shard is partial
    full = _fill(w)
    assert w.finalize()
    s = Store(path)
    assert s.n_rows == 37 and s.layers == LAYERS and s.committed() == list(range(5))
    for layer in LAYERS:
        got = s.read_last(layer, 0, 37)
        assert got.dtype == st.STORAGE_DTYPES[dtype]
        assert np.array_equal(_bits(got), _bits(full[layer]))
        assert np.array_equal(_bits(s.read_last(layer, 9, 30)), _bits(full[layer][9:30]))
        rows = np.array([36, 0, 17, 8, 8])
        assert np.array_equal(_bits(s.read_rows(layer, rows)), _bits(full[layer][rows]))
    assert torch.signbit(s.read_last(LAYERS[0], 0, 1)[0, 0])  # -0.0 survived
    assert s.examples() == _examples(37)
    for r in (0, 5, 36):
        assert s.token_ids(r).tolist() == _token_ids(37)[r]


def test_readable_with_plain_zarr_and_numpy(tmp_path):
    path = tmp_path / "store"
    w = _open(path, _meta(n=20, dtype="fp16"))
    full = _fill(w)
    w.finalize()
    g = zarr.open_group(str(path), mode="r")  # no uav involved from here on
    for layer in LAYERS:
        arr = g[f"acts/{layer}/last"]
        assert arr.dtype == np.uint16 and arr.shape == (20, D)
        got = np.asarray(arr[:]).view(np.float16)
        want = full[layer].numpy()
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
        assert np.allclose(got.astype(np.float32), want.astype(np.float32))
    assert list(g["examples/id"][:]) == [e["id"] for e in _examples(20)]
    assert list(g["examples/split"][:]) == [e["split"] for e in _examples(20)]
    assert [json.loads(r) for r in g["examples/record"][:]] == _examples(20)
    assert g["examples/truncated"][:].tolist() == [i % 7 == 0 for i in range(20)]
    off, ids = g["tokens/offsets"][:], g["tokens/ids"][:]
    assert [ids[off[i]:off[i + 1]].tolist() for i in range(20)] == _token_ids(20)
    assert g.attrs["uav_store"]["dtype"] == "fp16" and g.attrs["uav_store"]["complete"] is True


def test_positions_all_round_trip(tmp_path):
    path = tmp_path / "store"
    meta = _meta(n=12, shard_rows=5, chunk_rows=5, positions="all", layers=["L0"])
    w = _open(path, meta)
    lens = [len(t) for t in _token_ids(12)]
    per_row = [torch.randn(n_tok, D).half() for n_tok in lens]
    for s in range(meta["n_shards"]):
        a, b = w.shard_range(s)
        last = torch.stack([per_row[r][-1] for r in range(a, b)])
        w.write_shard(s, {"L0": to_bits(last, "fp16")}, {"L0": to_bits(torch.cat(per_row[a:b]), "fp16")})
    assert w.finalize()
    s = Store(path)
    assert s.verify() == []
    for r in range(12):
        assert np.array_equal(_bits(s.read_tokens("L0", r)), _bits(per_row[r]))
    with pytest.raises(UavError, match="not in store"):
        s.read_last("nope", 0, 1)
    # a store written before tables carried checksums has no chunk file for an all-zero positions/start (zarr skips
    # chunks equal to the fill value): that reads as zeros, not as a missing file; once checksummed, it is missing
    start = zarr.open_array(str(path / "positions" / "start"), mode="r+")
    assert not start[:].any()
    del start.attrs["sha256"]
    shutil.rmtree(path / "positions" / "start" / "c")
    assert Store(path).verify() == []
    start.attrs["sha256"] = "0" * 64
    assert any("positions/start/c/0 is missing" in p for p in Store(path).verify())


# ---------------------------------------------------------------------------------------------- metadata

def test_root_metadata_is_complete_and_stats_match_numpy(tmp_path, tiny_llama_dir):
    from uav_cache.harvest import HarvestConfig, harvest

    data = tmp_path / "d.jsonl"
    texts = ["The capital of France is Paris.", "The cat sat on the mat and looked at the dog.",
             "Paris, Berlin and Rome are cities in Europe.", "0 1 2 3 4 5 6 7 8 9 10 100 1000"]
    with open(data, "w") as f:
        for i in range(21):
            f.write(json.dumps({"id": f"r{i}", "text": texts[i % 4] + " " * (i % 2) + "x" * (i % 3),
                                "task": "gist", "source": "t", "split": ("train", "val", "test")[i % 3]}) + "\n")
    out = tmp_path / "store"
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(out), layers=[0, 1], shard_rows=8,
                          progress=False, device="cpu"))
    g = zarr.open_group(str(out), mode="r")
    m = g.attrs["uav_store"]
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION
    assert m["donor"] == tiny_llama_dir.name and len(m["weights_fingerprint"]) == 64
    assert m["layers"] == ["model.layers.0", "model.layers.1"] and m["layer_indices"] == [0, 1]
    assert m["positions"] == "last" and m["dtype"] == "fp16" and m["d_model"] == 32
    for k in ("vocab_sha256", "special_tokens_sha256", "chat_template_sha256"):
        assert isinstance(m["tokenizer"][k], str) and len(m["tokenizer"][k]) == 64, k  # tiny llama has a template
    assert m["dataset"]["name"] == "d" and len(m["dataset"]["fingerprint"]) == 64
    assert m["dataset_fingerprint"] == m["dataset"]["fingerprint"]
    assert m["dataset"]["split_sizes"] == {"train": 7, "val": 7, "test": 7}
    assert m["uav_version"] and m["created"] and m["complete"] is True
    assert (m["n_rows"], m["n_shards"], m["shard_rows"]) == (21, 3, 8)
    for layer in m["layers"]:
        x = np.asarray(g[f"acts/{layer}/last"][:]).view(np.float16).astype(np.float64)
        stats = m["stats"][layer]
        assert set(stats) >= {"mean", "std", "norm_mean", "norm_std", "max_abs"}
        assert stats["count"] == 21
        np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats["std"], x.std(0), rtol=1e-6, atol=1e-9)
        norms = np.linalg.norm(x, axis=1)
        np.testing.assert_allclose(stats["norm_mean"], norms.mean(), rtol=1e-9)
        np.testing.assert_allclose(stats["norm_std"], norms.std(), rtol=1e-4, atol=1e-9)
        assert stats["max_abs"] == np.abs(x).max()
    info = Store(out).info()
    assert tiny_llama_dir.name in info and "committed 3/3" in info and "(complete)" in info


def test_stats_before_finalize_and_synthetic_stats(tmp_path):
    path = tmp_path / "store"
    w = _open(path, _meta(n=30, dtype="bf16"))
    full = _fill(w, shards=[0, 1, 2])
    s = Store(path)
    assert "stats" not in s.meta and s.meta["complete"] is False
    x = full[LAYERS[1]][:24].double().numpy()
    got = s.stats(LAYERS[1])
    assert got["count"] == 24
    np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got["max_abs"], np.abs(x).max())
    assert not w.finalize()  # shard 3 is missing
    _fill(w, shards=[3])
    assert w.finalize() and w.finalize()  # idempotent
    s.refresh()
    x = full[LAYERS[1]].double().numpy()
    np.testing.assert_allclose(s.stats(LAYERS[1])["std"], x.std(0), rtol=1e-6)
    np.testing.assert_allclose(s.stats(LAYERS[1])["norm_mean"], np.linalg.norm(x, axis=1).mean(), rtol=1e-9)


def test_check_compatible(tmp_path):
    path = tmp_path / "store"
    _fill(_open(path, _meta(n=10)))
    s = Store(path)
    check_compatible(s, donor="synthetic-donor", d_model=D, layers=LAYERS, dtype=None)
    with pytest.raises(UavError) as e:
        check_compatible(s, donor="synthetic-donor", d_model=64)
    assert "d_model" in str(e.value) and "donor" not in e.value.problem.split("(", 1)[1]


# ---------------------------------------------------------------------------------------------- visibility

def test_readers_see_only_committed_shards(tmp_path, monkeypatch):
    path = tmp_path / "store"
    meta = _meta(n=24, shard_rows=8)
    w = _open(path, meta)
    full = _fill(w, shards=[0, 2])
    s = Store(path)
    assert s.committed() == [0, 2]
    assert s.committed_rows().tolist() == list(range(0, 8)) + list(range(16, 24))
    for split in ("train", "val", "test"):
        want = [r for r in list(range(0, 8)) + list(range(16, 24)) if _examples(24)[r]["split"] == split]
        assert s.split_rows(split).tolist() == want
    assert w.pending_shards() == [1]

    # shard 1's arrays are written, but the commit rename never happens (killed just before it)
    def no_commit(p, obj):
        raise OSError(errno.EIO, "simulated crash before commit")
    monkeypatch.setattr(writer, "write_json_atomic", no_commit)
    a, b = w.shard_range(1)
    with pytest.raises(UavError, match="shard 1"):
        w.write_shard(1, {layer: to_bits(full[layer][a:b], "fp16") for layer in LAYERS})
    raw = zarr.open_group(str(path), mode="r")[f"acts/{LAYERS[0]}/last"][a:b]
    assert np.array_equal(raw, to_bits(full[LAYERS[0]][a:b], "fp16"))  # the bytes are on disk ...
    s = Store(path)
    assert s.committed() == [0, 2] and 8 not in s.committed_rows()  # ... yet invisible to readers
    assert s.stats(LAYERS[0])["count"] == 16
    assert w.pending_shards() == [1] and not w.finalize()
    assert any("shard 1" in p and "not committed" in p for p in s.verify())


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("key,value", [("donor", "other-donor"), ("layers", ["model.layers.2"]), ("dtype", "bf16"),
                                       ("dataset_fingerprint", "e" * 64), ("weights_fingerprint", "x" * 64)])
def test_create_or_open_refuses_other_identity(tmp_path, key, value):
    path = tmp_path / "store"
    _fill(_open(path, _meta(n=16)), shards=[0])
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    with pytest.raises(UavError) as e:
        _open(path, _meta(n=16, **{key: value}))
    assert f"{key}:" in e.value.problem and repr(value) in e.value.problem
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before
    assert _open(path, _meta(n=16, created="another time")).committed() == {0}  # same identity: re-opened


def test_create_or_open_refuses_foreign_folder_and_leaves_it_alone(tmp_path):
    path = tmp_path / "mydata"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(UavError, match="not a uav activation store"):
        _open(path, _meta(n=8))
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt", "zarr.json"]
    assert (path / "notes.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mydata"]  # no temp folder left beside it
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(UavError):
        _open(afile, _meta(n=8))
    assert afile.read_text() == "x"


def test_create_or_open_accepts_empty_folder(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    w = _open(path, _meta(n=8))
    full = _fill(w)
    assert w.finalize()
    assert Store(path).verify() == []
    assert np.array_equal(_bits(Store(path).read_last(LAYERS[0], 0, 8)), _bits(full[LAYERS[0]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_store_reader_refuses_non_store(tmp_path):
    with pytest.raises(UavError, match="not a uav activation store"):
        Store(tmp_path)


# ---------------------------------------------------------------------------------------------- verify

def _good_store(path: Path, n: int = 40, shard_rows: int = 8) -> Store:
    w = _open(path, _meta(n=n, shard_rows=shard_rows))
    _fill(w)
    w.finalize()
    s = Store(path)
    assert s.verify() == []
    return s


def _shard_file(path: Path, layer: str, s: int) -> Path:
    f = path / "acts" / layer / "last" / "c" / str(s) / "0"
    assert f.is_file(), f
    return f


def test_verify_names_corrupted_shard(tmp_path):
    path = tmp_path / "store"
    s = _good_store(path)
    f = _shard_file(path, LAYERS[1], 3)
    raw = bytearray(f.read_bytes())
    mid = len(raw) // 2
    raw[mid - 8:mid + 8] = bytes(b ^ 0x5A for b in raw[mid - 8:mid + 8])
    f.write_bytes(bytes(raw))
    problems = s.verify()
    assert problems and all(p.startswith("shard 3:") for p in problems), problems
    assert any(f"acts/{LAYERS[1]}/last/c/3/0" in p for p in problems)


def test_verify_names_missing_chunk_file(tmp_path):
    path = tmp_path / "store"
    s = _good_store(path)
    _shard_file(path, LAYERS[0], 1).unlink()
    problems = s.verify()
    assert len(problems) == 1 and problems[0].startswith("shard 1:") and "c/1/0" in problems[0], problems


def test_reads_refuse_a_committed_shard_whose_file_is_missing(tmp_path):
    """Zarr reads a missing shard file back as the fill value: training would see all-zero rows without a word."""
    path = tmp_path / "store"
    full = _fill(_open(path, _meta(n=40, shard_rows=8)))
    _shard_file(path, LAYERS[0], 1).unlink()
    s = Store(path)
    for read in (lambda: s.read_last(LAYERS[0], 4, 12), lambda: s.read_rows(LAYERS[0], np.array([2, 9]))):
        with pytest.raises(st.UnreadableChunk) as e:
            read()
        assert "shard 1" in e.value.problem and "rows 8-15" in e.value.problem and "verify" in e.value.fix
    assert np.array_equal(_bits(s.read_last(LAYERS[0], 0, 8)), _bits(full[LAYERS[0]][:8]))  # other shards read
    assert np.array_equal(_bits(s.read_last(LAYERS[1], 8, 16)), _bits(full[LAYERS[1]][8:16]))  # and other layers


def test_an_all_zero_shard_without_a_file_and_an_uncommitted_shard_still_read(tmp_path):
    """Zarr (and uav before it wrote every chunk) writes no file for chunks that are all fill value: the commit
    checksum vouches for them."""
    path = tmp_path / "store"
    w = _open(path, _meta(n=24, shard_rows=8, layers=["L0"]))
    zeros = np.zeros((8, D), np.uint16)
    w.write_shard(0, {"L0": zeros})
    f = path / "acts" / "L0" / "last" / "c" / "0" / "0"
    assert f.exists()  # this writer writes every chunk, even an all-zero one
    f.unlink()  # as an older writer left it
    s = Store(path)
    assert np.array_equal(s.read_last("L0", 0, 24).numpy().view(np.uint16), np.zeros((24, D), np.uint16))


def test_read_tokens_refuses_a_missing_chunk(tmp_path):
    path = tmp_path / "store"
    meta = _meta(n=12, shard_rows=6, chunk_rows=6, positions="all", layers=["L0"])
    w = _open(path, meta)
    tok = [torch.randn(len(t), D).half() for t in _token_ids(12)]
    for s in range(2):
        a, b = w.shard_range(s)
        w.write_shard(s, {"L0": to_bits(torch.stack([t[-1] for t in tok[a:b]]), "fp16")},
                      {"L0": to_bits(torch.cat(tok[a:b]), "fp16")})
    (path / "acts" / "L0" / "all" / "s00001" / "c" / "0" / "0").unlink()
    s = Store(path)
    assert np.array_equal(_bits(s.read_tokens("L0", 2)), _bits(tok[2]))
    with pytest.raises(st.UnreadableChunk, match="shard 1"):
        s.read_tokens("L0", 7)


def test_a_stray_file_in_commits_is_ignored_by_readers_and_named_by_verify(tmp_path):
    path = tmp_path / "store"
    s = _good_store(path)
    (path / "_commits" / "s00000 (copy).json").write_bytes((path / "_commits" / "s00000.json").read_bytes())
    (path / "_commits" / ".s00001.json.deadbeef.tmp").write_text("{")  # an interrupted commit: not stray
    s = Store(path)
    assert s.committed() == list(range(5)) and "committed 5/5" in s.info()
    assert s.verify() == ["_commits/s00000 (copy).json is not a commit file (a copy?): remove it"]


def test_a_failed_layout_leaves_no_creating_folder(tmp_path, monkeypatch):
    def broken(tmp, *a):
        tmp.mkdir()
        raise ValueError("a bug while building the layout")

    monkeypatch.setattr(writer, "_create_layout", broken)
    with pytest.raises(ValueError):
        _open(tmp_path / "store", _meta())
    assert list(tmp_path.iterdir()) == []


def test_verify_names_missing_commit(tmp_path):
    path = tmp_path / "store"
    s = _good_store(path)
    (path / "_commits" / "s00004.json").unlink()
    problems = s.verify()
    assert len(problems) == 1 and "shard 4" in problems[0] and "not committed" in problems[0], problems
    assert 32 not in s.committed_rows()


def test_verify_flags_non_finite_values(tmp_path):
    path = tmp_path / "store"
    w = _open(path, _meta(n=16))
    full = _fill(w, shards=[0])
    bad = full[LAYERS[0]][8:16].clone()
    bad[3, 3] = float("inf")
    w.write_shard(1, {LAYERS[0]: to_bits(bad, "fp16"), LAYERS[1]: to_bits(full[LAYERS[1]][8:16], "fp16")})
    problems = Store(path).verify()
    assert len(problems) == 1 and problems[0].startswith("shard 1:") and "NaN/inf" in problems[0]


# ---------------------------------------------------------------------------------------------- two writers

def test_two_writers_fill_disjoint_shards(tmp_path):
    path = tmp_path / "store"
    meta = _meta(n=44, shard_rows=8)  # 6 shards: rank 0 owns 0,2,4; rank 1 owns 1,3,5
    start = threading.Barrier(2)
    writers: dict[int, StoreWriter] = {}
    pending: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    full = {layer: _values(44, "fp16", 7, k) for k, layer in enumerate(LAYERS)}

    def rank(r: int) -> None:
        try:
            start.wait()
            w = _open(path, meta)  # both race to create the store; exactly one creation wins
            writers[r] = w
            pending[r] = w.pending_shards(r, 2)
            for s in pending[r]:
                a, b = w.shard_range(s)
                w.write_shard(s, {layer: to_bits(full[layer][a:b], "fp16") for layer in LAYERS})
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert pending == {0: [0, 2, 4], 1: [1, 3, 5]}
    assert writers[0].pending_shards(0, 2) == [] and writers[1].pending_shards(1, 2) == []
    assert writers[0].finalize()
    s = Store(path)
    assert s.meta["complete"] and s.committed() == list(range(6)) and s.verify() == []
    for layer in LAYERS:
        assert np.array_equal(_bits(s.read_last(layer, 0, 44)), _bits(full[layer]))
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the losing creator cleaned up its temp folder


def test_write_shard_rejects_wrong_shape(tmp_path):
    w = _open(tmp_path / "store", _meta(n=16))
    with pytest.raises(ValueError, match="shard 0"):
        w.write_shard(0, {layer: np.zeros((7, D), np.uint16) for layer in LAYERS})
    with pytest.raises(ValueError):
        w.write_shard(0, {layer: np.zeros((8, D), np.int16) for layer in LAYERS})
    assert w.committed() == set()


def test_write_shard_enospc_is_a_uav_error_and_keeps_committed(tmp_path, monkeypatch):
    path = tmp_path / "store"
    w = _open(path, _meta(n=24))
    full = _fill(w, shards=[0])
    real_set = zarr.storage.LocalStore.set

    async def full_disk(self, key, value):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_disk)
    a, b = w.shard_range(1)
    with pytest.raises(UavError) as e:
        w.write_shard(1, {layer: to_bits(full[layer][a:b], "fp16") for layer in LAYERS})
    assert "shard 1" in e.value.problem and "No space left" in e.value.problem
    monkeypatch.setattr(zarr.storage.LocalStore, "set", real_set)
    s = Store(path)
    assert s.committed() == [0]
    assert [p for p in s.verify() if p.startswith("shard 0")] == []


def test_create_enospc_is_a_uav_error(tmp_path, monkeypatch):
    real_set = zarr.storage.LocalStore.set

    async def fills_up(self, key, value):  # the disk fills up while the static tables are written
        if key.startswith("tokens/ids/c"):  # a lone chunk write: no sibling write still in flight after it fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", fills_up)
    with pytest.raises(UavError, match="cannot create store"):
        _open(tmp_path / "store", _meta(n=8))
    assert list(tmp_path.iterdir()) == []  # neither the store nor its half-built temp folder


def test_from_bits_inverts_to_bits():
    for dtype in ("fp16", "bf16"):
        x = _values(9, dtype, 3)
        b = to_bits(x, dtype)
        assert b.dtype == np.uint16
        assert np.array_equal(_bits(from_bits(b, dtype)), _bits(x))


def test_writer_refuses_urls_without_creating_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Path("s3://b/x") would be the relative folder "s3:/b/x"
    for url in ("memory://x/store", "s3://bucket/store"):
        with pytest.raises(UavError, match="local stores only"):
            StoreWriter.create_or_open(url, _meta(n=8), _examples(8), _token_ids(8), [False] * 8)
    assert list(tmp_path.iterdir()) == []


def test_shard_rows_must_be_a_multiple_of_chunk_rows(tmp_path):
    with pytest.raises(UavError, match="multiple of chunk_rows"):
        _open(tmp_path / "store", _meta(n=20, shard_rows=6, chunk_rows=4))
    assert list(tmp_path.iterdir()) == []  # no half-built temp folder left behind
    w = _open(tmp_path / "store", _meta(n=20, shard_rows=3, chunk_rows=4))  # shard smaller than a chunk: fine
    _fill(w)
    assert w.finalize() and Store(tmp_path / "store").verify() == []


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_random_rows_equal_zarrs_own_read_for_both_codecs(tmp_path, codec):
    """Raw local stores read rows straight from the shard files, zstd ones through zarr: both give exactly what
    plain zarr reads, in the order asked, across shards and the short last shard."""
    path = tmp_path / "store"
    w = _open(path, _meta(n=44, shard_rows=8, codec=codec))  # 6 shards, the last one 4 rows
    _fill(w)
    s = Store(path)
    name = f"acts/{LAYERS[0]}/last"
    assert s.meta["codec"] == codec
    rows = np.array([43, 0, 7, 8, 21, 21, 40, 3])
    plain = zarr.open_group(str(path), mode="r")[name][:]
    assert np.array_equal(_bits(s.read_rows(LAYERS[0], rows)), plain[rows].view(np.int16))
    assert np.array_equal(_bits(s.read(LAYERS[0], 5, 44)), plain[5:44].view(np.int16))
    assert (s._raw[name] is not None) == (codec == "raw")  # which reader served them


def test_a_flipped_byte_in_a_raw_chunk_is_caught_by_its_crc(tmp_path):
    path = tmp_path / "store"
    full = _fill(_open(path, _meta(n=24, shard_rows=8, codec="raw")))
    f = path / "acts" / LAYERS[0] / "last" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0x40  # inside the data of the first inner chunk of shard 1: no codec would notice
    f.write_bytes(bytes(raw))
    s = Store(path)
    assert np.array_equal(_bits(s.read_last(LAYERS[0], 0, 8)), _bits(full[LAYERS[0]][:8]))  # other shards read
    with pytest.raises(st.UnreadableChunk, match="CRC32C"):
        s.read_rows(LAYERS[0], np.array([2, 9]))
    with pytest.raises(Exception, match="checksum do not match"):  # zarr's own reader refuses it too
        zarr.open_group(str(path), mode="r")[f"acts/{LAYERS[0]}/last"][8:12]
    assert any("shard 1" in p and "unreadable" in p for p in s.verify())


def test_a_flipped_byte_in_a_zstd_chunk_is_named_on_read_not_decoded_silently(tmp_path):
    """Blosc has no checksum of its own: the flipped byte below decodes to other numbers without a word (checked
    here with the codec alone). zstd stores end their codec chain with a CRC32C, so the read names the shard."""
    import numcodecs

    path = tmp_path / "store"
    full = _fill(_open(path, _meta(n=24, shard_rows=8, codec="zstd")))
    f = path / "acts" / LAYERS[0] / "last" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    n_inner = 2  # shard_rows 8 / chunk_rows 4
    off, nbytes = np.frombuffer(bytes(raw[-(16 * n_inner + 4):-4]), dtype="<u8").reshape(n_inner, 2)[0].tolist()
    blosc, at = bytes(raw[off:off + nbytes - 4]), off + 40  # the first inner chunk's Blosc frame, then its CRC32C
    flipped = bytearray(blosc)
    flipped[40] ^= 0x01
    decoded = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE).decode(bytes(flipped))
    assert bytes(decoded) != numcodecs.Blosc().decode(blosc)  # without the CRC: silently other numbers
    raw[at] ^= 0x01
    f.write_bytes(bytes(raw))
    s = Store(path)
    assert np.array_equal(_bits(s.read_last(LAYERS[0], 0, 8)), _bits(full[LAYERS[0]][:8]))  # other shards read
    with pytest.raises(st.UnreadableChunk, match=r"shard\(s\) \[1\].*CRC32C mismatch"):
        s.read_last(LAYERS[0], 8, 12)
    with pytest.raises(st.UnreadableChunk, match=r"shard\(s\) \[1\]"):
        s.read_rows(LAYERS[0], np.array([9, 10]))
    assert any("shard 1" in p for p in s.verify())


def test_pool_is_each_read_out_over_the_positions_that_count():
    """One function makes every read-out (the harvest's and the Verbalizer's): ``last`` is the last position that
    counts, ``mean`` leaves out position 0, the attention sink, unless it is all there is; a range that starts after
    the sink is averaged whole."""
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    whole = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)  # a 3-token text and a 1-token text, padded
    assert torch.equal(st.pool(h, whole, "last"), torch.stack([h[0, 2], h[1, 0]]))
    assert torch.equal(st.pool(h, whole, "mean"), torch.stack([h[0, 1:3].mean(0), h[1, 0]]))
    part = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(st.pool(h, part, "last"), torch.stack([h[0, 3], h[1, 2]]))
    assert torch.equal(st.pool(h, part, "mean"), torch.stack([h[0, 2:4].mean(0), h[1, 1:3].mean(0)]))
    assert st.pool(h.half(), whole, "mean").dtype == torch.float16
    with pytest.raises(UavError, match="unknown read-out 'max'"):
        st.pool(h, whole, "max")
    with pytest.raises(ValueError, match="no position"):
        st.pool(h, torch.zeros(2, 4, dtype=torch.bool), "mean")


def test_a_checksum_mismatch_is_told_in_hex_with_the_chunks_file(tmp_path):
    """zarr's own message gives a CRC32C mismatch as raw bytes (b'\\x12...'): reads and verify name the damaged file
    and give both checksums in hex instead."""
    import re

    path = tmp_path / "store"
    _fill(_open(path, _meta(n=24, shard_rows=8, codec="zstd")))
    f = path / "acts" / LAYERS[0] / "last" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[40] ^= 0x01  # inside the first inner chunk's data: its CRC32C no longer matches
    f.write_bytes(bytes(raw))
    table = path / "examples" / "n_tokens" / "c" / "1"
    raw = bytearray(table.read_bytes())
    raw[-1] ^= 0x01  # the table chunk's own CRC32C
    table.write_bytes(bytes(raw))
    s = Store(path)
    hexed = re.compile(r"CRC32C mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}")
    with pytest.raises(st.UnreadableChunk) as e:
        s.read_last(LAYERS[0], 8, 12)
    said = [str(e.value)]
    said += [p for p in s.verify() if "shard 1" in p or "n_tokens" in p]
    with pytest.raises(UavError) as e:
        s.column("n_tokens")
    said.append(str(e.value))
    assert len(said) == 4, said
    for line in said:
        assert hexed.search(line) and "b'" not in line and "\\x" not in line, line
    assert f"acts/{LAYERS[0]}/last/c/1/0" in said[0] and f"acts/{LAYERS[0]}/last/c/1/0" in said[1]
    assert all("examples/n_tokens/c/1" in line for line in said[2:]), said[2:]


def test_zstd_stores_written_before_the_chunk_checksum_still_read(tmp_path, monkeypatch):
    path = tmp_path / "store"
    monkeypatch.setattr(writer, "codecs", lambda codec: {"compressors": layout.compressor()})  # the old chain: Blosc alone
    full = _fill(_open(path, _meta(n=24, shard_rows=8, codec="zstd")))
    monkeypatch.undo()
    s = Store(path)
    assert [c["name"] for c in s.group[f"acts/{LAYERS[0]}/last"].metadata.codecs[0].to_dict()["configuration"]["codecs"]] \
        == ["bytes", "blosc"]
    assert np.array_equal(_bits(s.read_last(LAYERS[0], 0, 24)), _bits(full[LAYERS[0]])) and s.verify() == []


def test_the_direct_reader_reads_a_raw_array_that_zarr_itself_wrote(tmp_path):
    """A raw-codec shard written by plain zarr (not by uav's one-write encoder) reads the same through uav's reader:
    the two agree on the layout."""
    g = zarr.open_group(str(tmp_path / "z"), mode="w")
    a = g.create_array("x", shape=(44, 8), dtype="uint16", chunks=(4, 8), shards=(16, 8), fill_value=0, **layout.codecs("raw"))
    v = np.random.default_rng(0).integers(0, 65535, (44, 8), dtype=np.uint16)
    a.with_config({"write_empty_chunks": True})[:] = v
    r = RawArray.of(str(tmp_path / "z"), "x", a)
    rows = np.array([43, 0, 5, 17, 17, 30])
    assert r is not None and np.array_equal(r.rows(rows), v[rows]) and np.array_equal(r.span(3, 40), v[3:40])
