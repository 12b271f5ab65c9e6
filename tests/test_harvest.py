"""harvest() on tiny random donors: exact activations, resume after kills, refusals (uav_cache.harvest)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoTokenizer

from conftest import SENTENCES
from uav_cache import harvest as hv
from uav_cache import store as st
from uav_cache.store import writer
from uav_cache.store.format import read_commit
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.store import Store, StoreWriter

N_EXAMPLES = 48
SHARD_ROWS = 8  # 6 shards


def _write_jsonl(path: Path, n: int = N_EXAMPLES) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            # 1..5 sentences, rotated: lengths vary inside every batch, so right-padding is exercised
            k = 1 + (i * 7) % 5
            text = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(k))
            if i % 11 == 3:
                text = "Hi"
            f.write(json.dumps({"id": f"ex{i:03d}", "text": text, "task": ("fact", "gist")[i % 2], "source": "tiny",
                                "split": ("train", "val", "test")[i % 3],
                                "qa": [{"question": "What is it?", "answer": str(i)}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return str(_write_jsonl(tmp_path_factory.mktemp("data") / "tiny.jsonl"))


def _cfg(donor: Path, data: str, out: Path, **kw) -> HarvestConfig:
    base = dict(donor=str(donor), data=data, out=str(out), layers=[1], shard_rows=SHARD_ROWS, batch_size=4,
                progress=False, device="cpu", rank=0, world=1)
    base.update(kw)
    return HarvestConfig(**base)


@pytest.fixture(scope="module")
def ref_store(tiny_llama_dir, data, tmp_path_factory) -> Path:
    """An uninterrupted harvest: the reference every resumed store must equal bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "store"
    harvest(_cfg(tiny_llama_dir, data, out))
    return out


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    with warnings.catch_warnings():  # _commits/ is ours, not a zarr node
        warnings.filterwarnings("ignore", message="Object at _commits")
        members = g.members(max_depth=None)
    return {name: np.asarray(node[...]) for name, node in members if isinstance(node, zarr.Array)}


def assert_same_store(a: Path, b: Path) -> None:
    """Every array bitwise equal, same commits (checksums, stats), same metadata but for the creation time."""
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name
    sa, sb = Store(a), Store(b)
    assert sa.committed() == sb.committed() == list(range(sa.meta["n_shards"]))
    for s in sa.committed():
        ca, cb = read_commit(a, s), read_commit(b, s)
        assert (ca["rows"], ca["sha256"], ca["stats"]) == (cb["rows"], cb["sha256"], cb["stats"])
    drop = ("created",)
    assert {k: v for k, v in sa.meta.items() if k not in drop} == {k: v for k, v in sb.meta.items() if k not in drop}


def _reference_hidden(model, ids: list[int], block: int) -> torch.Tensor:
    """hidden_states[block + 1] of an unpadded, single-example forward pass: (tokens, d) float32."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[block + 1][0].float()


def _load(folder: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------- exact values

def test_llama_fp16_last_token_equals_transformers_forward(ref_store, tiny_llama_dir):
    s = Store(ref_store)
    assert s.meta["dtype"] == "fp16" and s.layers == ["model.layers.1"]
    lengths = s.group["examples/n_tokens"][:]
    rows = sorted({int(np.flatnonzero(lengths == n)[0]) for n in np.unique(lengths)})  # one row per length
    assert len(rows) >= 4
    model = _load(tiny_llama_dir)
    stored = s.read_rows("model.layers.1", np.array(rows))
    assert stored.dtype == torch.float16
    for k, r in enumerate(rows):
        ids = s.token_ids(r).tolist()
        assert len(ids) == lengths[r]
        h = _reference_hidden(model, ids, block=1)
        want = h[-1].to(torch.float16).float()
        got = stored[k].float()
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-5), (r, (got - want).abs().max())
        # the check can tell a wrong read-out apart: other positions and other layers differ by far more
        if len(ids) > 1:
            assert (got - h[-2]).abs().max() > 100 * 1e-5
        assert (got - _reference_hidden(model, ids, block=0)[-1]).abs().max() > 100 * 1e-5


@pytest.mark.parametrize("which,dtype,block,rtol", [("llama", "fp16", 1, 1e-3), ("gemma", "bf16", 1, 8e-3)])
def test_positions_all_equals_every_token_of_transformers_forward(request, data, tmp_path, which, dtype, block, rtol):
    donor = request.getfixturevalue(f"tiny_{which}_dir")
    out = tmp_path / "store"
    harvest(_cfg(donor, data, out, layers=[block], positions="all", dtype=dtype, limit=24))
    s = Store(out)
    layer = f"model.layers.{block}"
    assert s.meta["positions"] == "all" and s.meta["dtype"] == dtype and s.verify() == []
    model = _load(donor)
    tdt = st.STORAGE_DTYPES[dtype]
    last = s.read_last(layer, 0, s.n_rows)
    assert last.dtype == tdt
    seen_lengths = set()
    for r in range(s.n_rows):
        ids = s.token_ids(r).tolist()
        seen_lengths.add(len(ids))
        h = _reference_hidden(model, ids, block)
        want = h.to(tdt).float()
        toks = s.read_tokens(layer, r)
        assert toks.dtype == tdt and toks.shape == (len(ids), 32)
        assert torch.allclose(toks.float(), want, rtol=rtol, atol=1e-4), (r, (toks.float() - want).abs().max())
        assert torch.equal(toks[-1], last[r])  # the read-out row is the last token of the ragged rows
    assert len(seen_lengths) >= 4


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_window_store_keeps_w_consecutive_tokens_and_every_token_knows_its_characters(request, data, tmp_path, which):
    """positions=window:W keeps, per row, the vectors of W consecutive tokens (all of a shorter text) at a position
    fixed by the example id: exactly those rows of the all-token store. tokens/spans maps every token back to its
    characters in the text (the BOS to none), so the text of any window can be cut from the example."""
    donor = request.getfixturevalue(f"tiny_{which}_dir")
    full, win = tmp_path / "all", tmp_path / "win"
    harvest(_cfg(donor, data, full, layers=[1, 2], positions="all", limit=24))
    harvest(_cfg(donor, data, win, layers=[1, 2], positions="window:4", limit=24))
    a, w = Store(full), Store(win)
    assert w.token_width == 4 and a.token_width is None and w.verify() == []
    moved = 0
    for r in range(w.n_rows):
        n = len(w.token_ids(r))
        pos = w.stored_positions(r)
        assert len(pos) == min(n, 4) and pos[0] >= 0 and pos[-1] < n and list(pos) == list(range(pos[0], pos[0] + len(pos)))
        moved += pos[0] > 0
        for layer in w.layers:
            assert torch.equal(w.read_tokens(layer, r), a.read_tokens(layer, r)[pos])
    assert moved >= 3  # windows are spread over the texts, not all at the start
    texts = [e["text"] for e in a.examples()]
    spans = a.char_spans(0, a.n_rows)
    tok = AutoTokenizer.from_pretrained(str(donor))
    for r, (text, sp) in enumerate(zip(texts, spans)):
        ids = a.token_ids(r).tolist()
        assert sp.shape == (len(ids), 2)
        inside = [(int(x), int(y)) for x, y in sp if x >= 0]
        assert inside == sorted(inside) and all(0 <= x < y <= len(text) for x, y in inside)
        for i, (x, y) in enumerate(sp):  # a token inside the text decodes to its characters (spaces aside)
            if x >= 0:
                assert tok.decode([ids[i]]).strip() == text[x:y].strip()
            else:
                assert ids[i] in tok.all_special_ids
        # the tokens cover the text: nothing but spaces falls between them
        covered = "".join(text[x:y] for x, y in inside)
        assert covered.replace(" ", "") == text.replace(" ", "")
    with pytest.raises(UavError, match="pooled read-outs only"):
        Store(ref_store_path(tmp_path, donor, data)).read_tokens("model.layers.1", 0)
    # token vectors of one layer only: the other keeps its read-outs, and the store is that much smaller
    one = tmp_path / "one"
    harvest(_cfg(donor, data, one, layers=[1, 2], positions="all", token_layers=[1], limit=24))
    o = Store(one)
    assert o.token_layers == ["model.layers.1"] and o.verify() == []
    assert torch.equal(o.read_tokens("model.layers.1", 3), a.read_tokens("model.layers.1", 3))
    assert torch.equal(o.read("model.layers.2", 0, 24, "mean"), a.read("model.layers.2", 0, 24, "mean"))
    with pytest.raises(UavError, match="keeps token vectors of model.layers.1 only"):
        o.read_tokens("model.layers.2", 0)
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())  # noqa: E731
    assert size(one) < 0.7 * size(full)
    with pytest.raises(UavError, match="names blocks not harvested"):
        harvest(_cfg(donor, data, tmp_path / "bad", layers=[1], positions="all", token_layers=[2], limit=4))


def ref_store_path(tmp_path: Path, donor: Path, data: str) -> Path:
    out = tmp_path / "last"
    harvest(_cfg(donor, data, out, layers=[1], limit=8))
    return out


# ---------------------------------------------------------------------------------------------- resume

def test_resume_after_kills_at_random_points_equals_uninterrupted(ref_store, tiny_llama_dir, data, tmp_path,
                                                                  monkeypatch):
    rng = random.Random(1234)
    n_shards = Store(ref_store).meta["n_shards"]
    points = rng.sample(range(1, n_shards), 3)
    real_write = StoreWriter.write_shard
    for k, kill_after in enumerate(points):
        out = tmp_path / f"killed{k}"
        torn = k % 2 == 1  # odd runs die mid-shard: garbage arrays on disk, no commit file
        calls = {"n": 0}

        def dying_write(self, s, *args):
            if calls["n"] == kill_after:
                if torn:
                    a, b = self.shard_range(s)
                    for layer in self.meta["layers"]:
                        self.group[f"acts/{layer}/last"][a:b] = np.full((b - a, self.meta["d_model"]), 0x3C00,
                                                                        np.uint16)
                raise RuntimeError("simulated kill")
            calls["n"] += 1
            return real_write(self, s, *args)

        monkeypatch.setattr(StoreWriter, "write_shard", dying_write)
        with pytest.raises(RuntimeError, match="simulated kill"):
            harvest(_cfg(tiny_llama_dir, data, out))
        partial = Store(out)
        assert partial.committed() == list(range(kill_after)) and not partial.meta["complete"]
        assert partial.committed_rows().tolist() == list(range(kill_after * SHARD_ROWS))
        monkeypatch.setattr(StoreWriter, "write_shard", real_write)
        harvest(_cfg(tiny_llama_dir, data, out))
        assert Store(out).verify() == []
        assert_same_store(out, ref_store)


def test_rerunning_a_finished_harvest_is_a_no_op(ref_store, tiny_llama_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "store"
    shutil.copytree(ref_store, out)
    commits = out / "_commits"
    before = _mtimes(out)

    def no_compute(*a, **k):
        raise AssertionError("a finished store must not be recomputed")
    monkeypatch.setattr(hv, "forward_shard", no_compute)
    assert harvest(_cfg(tiny_llama_dir, data, out)) == out
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k.startswith("_commits")} == \
        {k: v for k, v in before.items() if k.startswith("_commits")} and len(list(commits.iterdir())) == 6
    assert {k: v for k, v in after.items() if k.startswith("acts")} == \
        {k: v for k, v in before.items() if k.startswith("acts")}
    assert_same_store(out, ref_store)


def test_two_ranks_fill_one_store(ref_store, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "store"
    harvest(_cfg(tiny_llama_dir, data, out, rank=1, world=2))
    s = Store(out)
    assert s.committed() == [1, 3, 5] and not s.meta["complete"]
    harvest(_cfg(tiny_llama_dir, data, out, rank=0, world=2))
    assert Store(out).meta["complete"] and Store(out).verify() == []
    assert_same_store(out, ref_store)


_CHILD = textwrap.dedent("""
    import sys, time
    from uav_cache.store import writer as store
    real = store.write_json_atomic
    def commit(path, obj):  # shard 0 commits; shard 1 waits, its arrays written, until the test kills the process
        if path.name == "s00001.json":
            time.sleep(600)
        real(path, obj)
    store.write_json_atomic = commit
    from uav_cache.harvest import HarvestConfig, harvest
    harvest(HarvestConfig(donor=sys.argv[1], data=sys.argv[2], out=sys.argv[3], layers=[1], shard_rows=8,
                          batch_size=4, progress=False, device="cpu"))
""")


@pytest.mark.slow  # ~11 s on a loaded 2-core machine, nearly all of it the child importing torch + transformers
def test_sigkilled_subprocess_resumes_to_the_same_store(ref_store, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RANK": "0", "WORLD_SIZE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny_llama_dir), data, str(out)],
                            cwd=Path(__file__).resolve().parent.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # against a hang only: the kill waits for the commit, not for a time
        while not (out / "_commits" / "s00000.json").exists():
            assert proc.poll() is None, f"child exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no commit within 600 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = Store(out)
    assert partial.committed() == [0] and partial.meta["n_shards"] > 1  # killed mid-harvest, shard 1 uncommitted
    harvest(_cfg(tiny_llama_dir, data, out))
    assert Store(out).verify() == []
    assert_same_store(out, ref_store)


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("change,key", [("donor", "donor"), ("layers", "layers"), ("dataset", "dataset_fingerprint")])
def test_refuses_a_store_of_another_harvest(ref_store, tiny_llama_dir, tiny_gemma_dir, data, tmp_path, change, key):
    kw = {"donor": dict(donor=tiny_gemma_dir), "layers": dict(layers=[0]), "dataset": dict(limit=40)}[change]
    cfg = _cfg(tiny_llama_dir, data, ref_store)
    for k, v in kw.items():
        setattr(cfg, k, str(v) if k == "donor" else v)
    before = _mtimes(ref_store)
    with pytest.raises(UavError) as e:
        harvest(cfg)
    assert f"{key}:" in e.value.problem and "new --out" in e.value.fix
    assert _mtimes(ref_store) == before


def _set_meta(store: Path, **changes) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    meta = doc["attributes"]["uav_store"]
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (store / "zarr.json").write_text(json.dumps(doc))


def test_compute_dtype_is_identity_but_old_stores_without_it_still_resume(ref_store, tiny_llama_dir, data, tmp_path):
    """A harvest started on a GPU (bf16 compute) and resumed on a CPU (fp32) would mix rows of two precisions."""
    assert Store(ref_store).meta["compute_dtype"] == "fp32"
    gpu = tmp_path / "gpu"
    shutil.copytree(ref_store, gpu)
    (gpu / "_commits" / "s00005.json").unlink()
    _set_meta(gpu, compute_dtype="bf16", complete=False)
    with pytest.raises(UavError, match="compute_dtype: store has 'bf16', this run has 'fp32'"):
        harvest(_cfg(tiny_llama_dir, data, gpu))
    old = tmp_path / "old"
    shutil.copytree(ref_store, old)
    (old / "_commits" / "s00005.json").unlink()
    _set_meta(old, compute_dtype=None, complete=False)
    assert "computed in ?" in Store(old).info()  # still opens for reading
    harvest(_cfg(tiny_llama_dir, data, old))  # and resumes: unknown is not different
    assert Store(old).verify() == [] and Store(old).committed() == list(range(6))


def test_unknown_donor_lists_known_names(data, tmp_path):
    with pytest.raises(UavError) as e:
        harvest(HarvestConfig(donor="no-such-donor", data=data, out=str(tmp_path / "s"), progress=False))
    assert "no-such-donor" in e.value.problem and "smollm2-135m" in e.value.fix
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("layer", [3, -4, 99])
def test_layer_out_of_range_names_valid_range(tiny_llama_dir, data, tmp_path, layer):
    with pytest.raises(UavError) as e:
        harvest(_cfg(tiny_llama_dir, data, tmp_path / "s", layers=[layer]))
    assert str(layer) in e.value.problem and "0..2" in e.value.fix
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("layers", [[1, 1], [2, -1]])
def test_a_block_named_twice_is_refused_leaving_nothing(tiny_llama_dir, data, tmp_path, layers):
    with pytest.raises(UavError, match="names a block twice"):
        harvest(_cfg(tiny_llama_dir, data, tmp_path / "s", layers=layers))
    assert list(tmp_path.iterdir()) == []  # no store, no .creating folder


@pytest.mark.parametrize("max_length", [-3, 0])
def test_max_length_below_one_is_refused(tiny_llama_dir, data, tmp_path, max_length):
    """-3 used to cut 3 tokens off every text and 0 to mean the registry's default, both silently."""
    with pytest.raises(UavError, match=f"--max-length must be ≥ 1, got {max_length}"):
        harvest(_cfg(tiny_llama_dir, data, tmp_path / "s", max_length=max_length))
    assert not (tmp_path / "s").exists()


def test_pickle_and_remote_code_donors_are_refused_in_one_line(tiny_llama_dir, data, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UavError, match="holds only pickle weights"):
        harvest(_cfg(pickled, data, tmp_path / "s1"))
    remote = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="xmodel", auto_map={"AutoConfig": "configuration_x.XConfig",
                                              "AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (remote / "config.json").write_text(json.dumps(cfg))
    for name in ("configuration_x.py", "modeling_x.py"):
        (remote / name).write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UavError, match="needs its own modelling code") as e:
        harvest(_cfg(remote, data, tmp_path / "s2"))
    assert "--trust-remote-code" in e.value.fix
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_empty_jsonl_is_refused(tiny_llama_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UavError, match="no examples"):
        harvest(_cfg(tiny_llama_dir, str(empty), tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_long_texts_are_truncated_and_flagged(tiny_llama_dir, data, tmp_path):
    from transformers import AutoTokenizer
    out = tmp_path / "store"
    harvest(_cfg(tiny_llama_dir, data, out, max_length=8, limit=16))
    s = Store(out)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    full = [tok(e["text"])["input_ids"] for e in s.examples()]
    trunc, n_tok = s.group["examples/truncated"][:], s.group["examples/n_tokens"][:]
    assert s.meta["max_length"] == 8
    assert trunc.tolist() == [len(f) > 8 for f in full] and trunc.any() and not trunc.all()
    assert n_tok.tolist() == [min(len(f), 8) for f in full]
    model = _load(tiny_llama_dir)
    for r in range(s.n_rows):
        assert s.token_ids(r).tolist() == full[r][:8]
    r = int(np.flatnonzero(trunc)[0])  # the read-out of a cut text is the state at its 8th token
    want = _reference_hidden(model, full[r][:8], block=1)[-1].half().float()
    assert torch.allclose(s.read_last("model.layers.1", r, r + 1)[0].float(), want, rtol=1e-3, atol=1e-5)
    assert "truncated  " in s.info() and f"{int(trunc.sum())} texts cut at 8" in s.info()


def test_fp16_overflow_is_refused_with_nothing_committed(tiny_llama_dir, data, tmp_path):
    donor = tmp_path / "loud_llama"
    shutil.copytree(tiny_llama_dir, donor)
    model = _load(tiny_llama_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1e7)  # residual stream ~1e5 > fp16 max 65504
    model.save_pretrained(donor)
    out = tmp_path / "store"
    with pytest.raises(UavError) as e:
        harvest(_cfg(donor, data, out, dtype="fp16", limit=16))
    assert "fp16" in e.value.problem and "bf16" in e.value.fix
    assert not out.exists() or Store(out).committed() == []
    harvest(_cfg(donor, data, tmp_path / "bf16", dtype="bf16", limit=16))  # bf16 holds it
    s = Store(tmp_path / "bf16")
    assert s.verify() == [] and s.stats("model.layers.1")["max_abs"] > 65504


def test_disk_full_mid_harvest_keeps_committed_shards(ref_store, tiny_llama_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "store"
    real = writer.write_json_atomic
    calls = {"n": 0}

    def full_disk(path, obj):
        if path.parent.name == "_commits":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, obj)
    monkeypatch.setattr(writer, "write_json_atomic", full_disk)
    with pytest.raises(UavError) as e:
        harvest(_cfg(tiny_llama_dir, data, out))
    assert "No space left" in e.value.problem and "shard 2" in e.value.problem
    s = Store(out)
    assert s.committed() == [0, 1]
    problems = s.verify()
    assert problems and all("not committed" in p for p in problems)
    assert not any(p.startswith(("shard 0", "shard 1 ")) for p in problems)
    monkeypatch.setattr(writer, "write_json_atomic", real)
    harvest(_cfg(tiny_llama_dir, data, out))
    assert_same_store(out, ref_store)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_is_a_uav_error(tiny_llama_dir, data, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(UavError, match="cannot create store"):
            harvest(_cfg(tiny_llama_dir, data, parent / "store"))
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units of the last place between fp16/bf16 bit patterns (sign-magnitude → ordered integers)."""
    def ordered(bits: np.ndarray) -> np.ndarray:
        v = (bits & 0x7FFF).astype(np.int32)
        return np.where(bits & 0x8000, -v, v)
    return np.abs(ordered(a) - ordered(b))


ULP_TOLERANCE = 1  # what the README states for harvests with different thread counts


def test_rows_are_bit_identical_with_the_same_thread_count_and_within_one_ulp_across_counts(ref_store, tiny_llama_dir,
                                                                                            data, tmp_path):
    """The reference store was harvested with one thread (conftest). Two threads may split BLAS's matrix products
    differently, so the last bit of a row may move, by at most ULP_TOLERANCE; two harvests with the same count are
    bit-identical. --threads sets the count for the harvest only."""
    two, again = tmp_path / "two", tmp_path / "again"
    harvest(_cfg(tiny_llama_dir, data, two, threads=2))
    assert torch.get_num_threads() == 1  # restored after the harvest
    x, ref = _arrays(two), _arrays(ref_store)
    acts = [k for k in ref if k.startswith("acts/")]
    assert acts and all(_ulps(x[k], ref[k]).max() <= ULP_TOLERANCE for k in acts)
    harvest(_cfg(tiny_llama_dir, data, again, threads=2))
    assert_same_store(again, two)
