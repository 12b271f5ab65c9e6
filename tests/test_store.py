"""The activation-store format (uav_cache.store): round trips, metadata, commit visibility, refusals, verify."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch
import zarr

from uav_cache import store as st
from uav_cache.store import writer
from uav_cache.errors import UavError
from uav_cache.store import FORMAT, FORMAT_VERSION, Store, StoreWriter, check_compatible, from_bits, to_bits

from synthetic_store import D, LAYERS, as_bits, fill_shards, open_writer, synth_examples, synth_meta, synth_token_ids, synth_values


# ---------------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_round_trip_bit_identical(tmp_path, dtype):
    path = tmp_path / "store"
    w = open_writer(path, synth_meta(n=37, dtype=dtype))  # 37 rows: the last shard is partial
    full = fill_shards(w)
    assert w.finalize()
    s = Store(path)
    assert s.n_rows == 37 and s.layers == LAYERS and s.committed() == list(range(5))
    for layer in LAYERS:
        got = s.read_last(layer, 0, 37)
        assert got.dtype == st.STORAGE_DTYPES[dtype]
        assert np.array_equal(as_bits(got), as_bits(full[layer]))
        assert np.array_equal(as_bits(s.read_last(layer, 9, 30)), as_bits(full[layer][9:30]))
        rows = np.array([36, 0, 17, 8, 8])
        assert np.array_equal(as_bits(s.read_rows(layer, rows)), as_bits(full[layer][rows]))
    assert torch.signbit(s.read_last(LAYERS[0], 0, 1)[0, 0])  # -0.0 survived
    assert s.examples() == synth_examples(37)
    for r in (0, 5, 36):
        assert s.token_ids(r).tolist() == synth_token_ids(37)[r]


def test_readable_with_plain_zarr_and_numpy(tmp_path):
    path = tmp_path / "store"
    w = open_writer(path, synth_meta(n=20, dtype="fp16"))
    full = fill_shards(w)
    w.finalize()
    g = zarr.open_group(str(path), mode="r")  # no uav involved from here on
    for layer in LAYERS:
        arr = g[f"acts/{layer}/last"]
        assert arr.dtype == np.uint16 and arr.shape == (20, D)
        got = np.asarray(arr[:]).view(np.float16)
        want = full[layer].numpy()
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
        assert np.allclose(got.astype(np.float32), want.astype(np.float32))
    assert list(g["examples/id"][:]) == [e["id"] for e in synth_examples(20)]
    assert list(g["examples/split"][:]) == [e["split"] for e in synth_examples(20)]
    assert [json.loads(r) for r in g["examples/record"][:]] == synth_examples(20)
    assert g["examples/truncated"][:].tolist() == [i % 7 == 0 for i in range(20)]
    off, ids = g["tokens/offsets"][:], g["tokens/ids"][:]
    assert [ids[off[i]:off[i + 1]].tolist() for i in range(20)] == synth_token_ids(20)
    assert g.attrs["uav_store"]["dtype"] == "fp16" and g.attrs["uav_store"]["complete"] is True


def test_positions_all_round_trip(tmp_path):
    path = tmp_path / "store"
    meta = synth_meta(n=12, shard_rows=5, chunk_rows=5, positions="all", layers=["L0"])
    w = open_writer(path, meta)
    lens = [len(t) for t in synth_token_ids(12)]
    per_row = [torch.randn(n_tok, D).half() for n_tok in lens]
    for s in range(meta["n_shards"]):
        a, b = w.shard_range(s)
        last = torch.stack([per_row[r][-1] for r in range(a, b)])
        w.write_shard(s, {"L0": to_bits(last, "fp16")}, {"L0": to_bits(torch.cat(per_row[a:b]), "fp16")})
    assert w.finalize()
    s = Store(path)
    assert s.verify() == []
    for r in range(12):
        assert np.array_equal(as_bits(s.read_tokens("L0", r)), as_bits(per_row[r]))
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
    w = open_writer(path, synth_meta(n=30, dtype="bf16"))
    full = fill_shards(w, shards=[0, 1, 2])
    s = Store(path)
    assert "stats" not in s.meta and s.meta["complete"] is False
    x = full[LAYERS[1]][:24].double().numpy()
    got = s.stats(LAYERS[1])
    assert got["count"] == 24
    np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got["max_abs"], np.abs(x).max())
    assert not w.finalize()  # shard 3 is missing
    fill_shards(w, shards=[3])
    assert w.finalize() and w.finalize()  # idempotent
    s.refresh()
    x = full[LAYERS[1]].double().numpy()
    np.testing.assert_allclose(s.stats(LAYERS[1])["std"], x.std(0), rtol=1e-6)
    np.testing.assert_allclose(s.stats(LAYERS[1])["norm_mean"], np.linalg.norm(x, axis=1).mean(), rtol=1e-9)


def test_check_compatible(tmp_path):
    path = tmp_path / "store"
    fill_shards(open_writer(path, synth_meta(n=10)))
    s = Store(path)
    check_compatible(s, donor="synthetic-donor", d_model=D, layers=LAYERS, dtype=None)
    with pytest.raises(UavError) as e:
        check_compatible(s, donor="synthetic-donor", d_model=64)
    assert "d_model" in str(e.value) and "donor" not in e.value.problem.split("(", 1)[1]


# ---------------------------------------------------------------------------------------------- visibility

def test_readers_see_only_committed_shards(tmp_path, monkeypatch):
    path = tmp_path / "store"
    meta = synth_meta(n=24, shard_rows=8)
    w = open_writer(path, meta)
    full = fill_shards(w, shards=[0, 2])
    s = Store(path)
    assert s.committed() == [0, 2]
    assert s.committed_rows().tolist() == list(range(0, 8)) + list(range(16, 24))
    for split in ("train", "val", "test"):
        want = [r for r in list(range(0, 8)) + list(range(16, 24)) if synth_examples(24)[r]["split"] == split]
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
    fill_shards(open_writer(path, synth_meta(n=16)), shards=[0])
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    with pytest.raises(UavError) as e:
        open_writer(path, synth_meta(n=16, **{key: value}))
    assert f"{key}:" in e.value.problem and repr(value) in e.value.problem
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before
    assert open_writer(path, synth_meta(n=16, created="another time")).committed() == {0}  # same identity: re-opened


def test_create_or_open_refuses_foreign_folder_and_leaves_it_alone(tmp_path):
    path = tmp_path / "mydata"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(UavError, match="not a uav activation store"):
        open_writer(path, synth_meta(n=8))
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt", "zarr.json"]
    assert (path / "notes.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mydata"]  # no temp folder left beside it
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(UavError):
        open_writer(afile, synth_meta(n=8))
    assert afile.read_text() == "x"


def test_create_or_open_accepts_empty_folder(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    w = open_writer(path, synth_meta(n=8))
    full = fill_shards(w)
    assert w.finalize()
    assert Store(path).verify() == []
    assert np.array_equal(as_bits(Store(path).read_last(LAYERS[0], 0, 8)), as_bits(full[LAYERS[0]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_store_reader_refuses_non_store(tmp_path):
    with pytest.raises(UavError, match="not a uav activation store"):
        Store(tmp_path)


# ---------------------------------------------------------------------------------------------- two writers

def test_two_writers_fill_disjoint_shards(tmp_path):
    path = tmp_path / "store"
    meta = synth_meta(n=44, shard_rows=8)  # 6 shards: rank 0 owns 0,2,4; rank 1 owns 1,3,5
    start = threading.Barrier(2)
    writers: dict[int, StoreWriter] = {}
    pending: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    full = {layer: synth_values(44, "fp16", 7, k) for k, layer in enumerate(LAYERS)}

    def rank(r: int) -> None:
        try:
            start.wait()
            w = open_writer(path, meta)  # both race to create the store; exactly one creation wins
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
        assert np.array_equal(as_bits(s.read_last(layer, 0, 44)), as_bits(full[layer]))
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the losing creator cleaned up its temp folder


def test_write_shard_rejects_wrong_shape(tmp_path):
    w = open_writer(tmp_path / "store", synth_meta(n=16))
    with pytest.raises(ValueError, match="shard 0"):
        w.write_shard(0, {layer: np.zeros((7, D), np.uint16) for layer in LAYERS})
    with pytest.raises(ValueError):
        w.write_shard(0, {layer: np.zeros((8, D), np.int16) for layer in LAYERS})
    assert w.committed() == set()


def test_write_shard_enospc_is_a_uav_error_and_keeps_committed(tmp_path, monkeypatch):
    path = tmp_path / "store"
    w = open_writer(path, synth_meta(n=24))
    full = fill_shards(w, shards=[0])
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
        open_writer(tmp_path / "store", synth_meta(n=8))
    assert list(tmp_path.iterdir()) == []  # neither the store nor its half-built temp folder


def test_from_bits_inverts_to_bits():
    for dtype in ("fp16", "bf16"):
        x = synth_values(9, dtype, 3)
        b = to_bits(x, dtype)
        assert b.dtype == np.uint16
        assert np.array_equal(as_bits(from_bits(b, dtype)), as_bits(x))


def test_writer_refuses_urls_without_creating_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Path("s3://b/x") would be the relative folder "s3:/b/x"
    for url in ("memory://x/store", "s3://bucket/store"):
        with pytest.raises(UavError, match="local stores only"):
            StoreWriter.create_or_open(url, synth_meta(n=8), synth_examples(8), synth_token_ids(8), [False] * 8)
    assert list(tmp_path.iterdir()) == []


def test_shard_rows_must_be_a_multiple_of_chunk_rows(tmp_path):
    with pytest.raises(UavError, match="multiple of chunk_rows"):
        open_writer(tmp_path / "store", synth_meta(n=20, shard_rows=6, chunk_rows=4))
    assert list(tmp_path.iterdir()) == []  # no half-built temp folder left behind
    w = open_writer(tmp_path / "store", synth_meta(n=20, shard_rows=3, chunk_rows=4))  # shard smaller than a chunk: fine
    fill_shards(w)
    assert w.finalize() and Store(tmp_path / "store").verify() == []


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
