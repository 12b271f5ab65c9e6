"""Store integrity (uav_cache.store): verify, missing and damaged chunks, checksums, and what plain zarr reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from uav_cache import store as st
from uav_cache.store import format as layout, writer
from uav_cache.store.raw import RawArray
from uav_cache.errors import UavError
from uav_cache.store import Store, to_bits

from synthetic_store import D, LAYERS, as_bits, fill_shards, open_writer, synth_meta, synth_token_ids


# ---------------------------------------------------------------------------------------------- verify

def _good_store(path: Path, n: int = 40, shard_rows: int = 8) -> Store:
    w = open_writer(path, synth_meta(n=n, shard_rows=shard_rows))
    fill_shards(w)
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
    full = fill_shards(open_writer(path, synth_meta(n=40, shard_rows=8)))
    _shard_file(path, LAYERS[0], 1).unlink()
    s = Store(path)
    for read in (lambda: s.read_last(LAYERS[0], 4, 12), lambda: s.read_rows(LAYERS[0], np.array([2, 9]))):
        with pytest.raises(st.UnreadableChunk) as e:
            read()
        assert "shard 1" in e.value.problem and "rows 8-15" in e.value.problem and "verify" in e.value.fix
    assert np.array_equal(as_bits(s.read_last(LAYERS[0], 0, 8)), as_bits(full[LAYERS[0]][:8]))  # other shards read
    assert np.array_equal(as_bits(s.read_last(LAYERS[1], 8, 16)), as_bits(full[LAYERS[1]][8:16]))  # and other layers


def test_an_all_zero_shard_without_a_file_and_an_uncommitted_shard_still_read(tmp_path):
    """Zarr (and uav before it wrote every chunk) writes no file for chunks that are all fill value: the commit
    checksum vouches for them."""
    path = tmp_path / "store"
    w = open_writer(path, synth_meta(n=24, shard_rows=8, layers=["L0"]))
    zeros = np.zeros((8, D), np.uint16)
    w.write_shard(0, {"L0": zeros})
    f = path / "acts" / "L0" / "last" / "c" / "0" / "0"
    assert f.exists()  # this writer writes every chunk, even an all-zero one
    f.unlink()  # as an older writer left it
    s = Store(path)
    assert np.array_equal(s.read_last("L0", 0, 24).numpy().view(np.uint16), np.zeros((24, D), np.uint16))


def test_read_tokens_refuses_a_missing_chunk(tmp_path):
    path = tmp_path / "store"
    meta = synth_meta(n=12, shard_rows=6, chunk_rows=6, positions="all", layers=["L0"])
    w = open_writer(path, meta)
    tok = [torch.randn(len(t), D).half() for t in synth_token_ids(12)]
    for s in range(2):
        a, b = w.shard_range(s)
        w.write_shard(s, {"L0": to_bits(torch.stack([t[-1] for t in tok[a:b]]), "fp16")},
                      {"L0": to_bits(torch.cat(tok[a:b]), "fp16")})
    (path / "acts" / "L0" / "all" / "s00001" / "c" / "0" / "0").unlink()
    s = Store(path)
    assert np.array_equal(as_bits(s.read_tokens("L0", 2)), as_bits(tok[2]))
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
        open_writer(tmp_path / "store", synth_meta())
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
    w = open_writer(path, synth_meta(n=16))
    full = fill_shards(w, shards=[0])
    bad = full[LAYERS[0]][8:16].clone()
    bad[3, 3] = float("inf")
    w.write_shard(1, {LAYERS[0]: to_bits(bad, "fp16"), LAYERS[1]: to_bits(full[LAYERS[1]][8:16], "fp16")})
    problems = Store(path).verify()
    assert len(problems) == 1 and problems[0].startswith("shard 1:") and "NaN/inf" in problems[0]



@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_random_rows_equal_zarrs_own_read_for_both_codecs(tmp_path, codec):
    """Raw local stores read rows straight from the shard files, zstd ones through zarr: both give exactly what
    plain zarr reads, in the order asked, across shards and the short last shard."""
    path = tmp_path / "store"
    w = open_writer(path, synth_meta(n=44, shard_rows=8, codec=codec))  # 6 shards, the last one 4 rows
    fill_shards(w)
    s = Store(path)
    name = f"acts/{LAYERS[0]}/last"
    assert s.meta["codec"] == codec
    rows = np.array([43, 0, 7, 8, 21, 21, 40, 3])
    plain = zarr.open_group(str(path), mode="r")[name][:]
    assert np.array_equal(as_bits(s.read_rows(LAYERS[0], rows)), plain[rows].view(np.int16))
    assert np.array_equal(as_bits(s.read(LAYERS[0], 5, 44)), plain[5:44].view(np.int16))
    assert (s._raw[name] is not None) == (codec == "raw")  # which reader served them


def test_a_flipped_byte_in_a_raw_chunk_is_caught_by_its_crc(tmp_path):
    path = tmp_path / "store"
    full = fill_shards(open_writer(path, synth_meta(n=24, shard_rows=8, codec="raw")))
    f = path / "acts" / LAYERS[0] / "last" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0x40  # inside the data of the first inner chunk of shard 1: no codec would notice
    f.write_bytes(bytes(raw))
    s = Store(path)
    assert np.array_equal(as_bits(s.read_last(LAYERS[0], 0, 8)), as_bits(full[LAYERS[0]][:8]))  # other shards read
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
    full = fill_shards(open_writer(path, synth_meta(n=24, shard_rows=8, codec="zstd")))
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
    assert np.array_equal(as_bits(s.read_last(LAYERS[0], 0, 8)), as_bits(full[LAYERS[0]][:8]))  # other shards read
    with pytest.raises(st.UnreadableChunk, match=r"shard\(s\) \[1\].*CRC32C mismatch"):
        s.read_last(LAYERS[0], 8, 12)
    with pytest.raises(st.UnreadableChunk, match=r"shard\(s\) \[1\]"):
        s.read_rows(LAYERS[0], np.array([9, 10]))
    assert any("shard 1" in p for p in s.verify())


def test_a_checksum_mismatch_is_told_in_hex_with_the_chunks_file(tmp_path):
    """zarr's own message gives a CRC32C mismatch as raw bytes (b'\\x12...'): reads and verify name the damaged file
    and give both checksums in hex instead."""
    import re

    path = tmp_path / "store"
    fill_shards(open_writer(path, synth_meta(n=24, shard_rows=8, codec="zstd")))
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
    full = fill_shards(open_writer(path, synth_meta(n=24, shard_rows=8, codec="zstd")))
    monkeypatch.undo()
    s = Store(path)
    assert [c["name"] for c in s.group[f"acts/{LAYERS[0]}/last"].metadata.codecs[0].to_dict()["configuration"]["codecs"]] \
        == ["bytes", "blosc"]
    assert np.array_equal(as_bits(s.read_last(LAYERS[0], 0, 24)), as_bits(full[LAYERS[0]])) and s.verify() == []


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
