"""Fault injection beyond the per-module tests: kills at many points (in-process and SIGKILL), readers racing a
writer, corrupt chunks reaching the trainer, and a sweep of bad command lines.

Already covered elsewhere (not repeated here): resume after an in-process kill at 3 points and one SIGKILLed
harvest subprocess (test_harvest), ENOSPC, verify naming a corrupt chunk (test_store), in-process training
resume equality (tests/trainer).

SIGKILL tests use one *fork server*: a child process that imports torch/transformers/peft once, then forks a
fresh grandchild per attempt, so each kill costs milliseconds instead of a 5 s interpreter start. A kill waits for an
event, never for a duration: the grandchild stops at a seeded point of its work (a shard's write, a shard's commit, a
training step), drops a marker file and waits there; the test kills it once the marker exists. However slow the
machine, every attempt is killed exactly there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_run, run_uav

from test_harvest import _write_jsonl, assert_same_store
from uav_cache.store import writer
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.store import Store, StoreWriter
from uav_train.stream import ItemStream
from uav_train.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
N = 24  # examples; with SHARD_ROWS 4: 6 shards
SHARD_ROWS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return str(_write_jsonl(tmp_path_factory.mktemp("data") / "tiny.jsonl", n=N))


def _hcfg(donor, data, out, **kw) -> HarvestConfig:
    base = dict(donor=str(donor), data=data, out=str(out), layers=[1], shard_rows=SHARD_ROWS, chunk_rows=2,
                batch_size=4, progress=False, device="cpu", rank=0, world=1)
    return HarvestConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ref_store(tiny_llama_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    harvest(_hcfg(tiny_llama_dir, data, out))
    assert Store(out).meta["n_shards"] == 6
    return out


def _bits(path: Path, layer: str = "model.layers.1") -> np.ndarray:
    s = Store(path)
    return s.group[f"acts/{layer}/last"][:]


# ---------------------------------------------------------------------------------------------- fork server

_SERVER = textwrap.dedent("""
    import json, os, sys, time, traceback
    import torch, transformers, peft  # noqa: F401  (imported once, inherited by every fork)
    from uav_cache.store import writer as store
    from uav_cache.harvest import HarvestConfig, harvest
    from uav_train.trainer import TrainConfig, train

    def pause(req):  # the kill point: say so with a marker file, then wait for the SIGKILL
        open(req["marker"], "w").close()
        time.sleep(600)

    def job(req):
        torch.set_num_threads(1)
        at = req["pause_at"]
        if req["fn"] == "harvest":  # at = [shard, "arrays" (before its arrays) or "commit" (arrays written, no commit)]
            real_write, real_commit = store.StoreWriter.write_shard, store.write_json_atomic
            def write(self, s, *args):
                if [s, "arrays"] == at:
                    pause(req)
                return real_write(self, s, *args)
            def commit(path, obj):
                if path.parent.name == "_commits" and [int(path.stem[1:]), "commit"] == at:
                    pause(req)
                real_commit(path, obj)
            store.StoreWriter.write_shard, store.write_json_atomic = write, commit
            harvest(HarvestConfig(**req["cfg"]))
        else:  # at = [stage, step]: just after that step's metrics line, before its checkpoint
            train(TrainConfig.from_dict(req["cfg"]), on_step=lambda stage, step, _: [stage, step] == at and pause(req))

    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job(req)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("exit", status, flush=True)
""")


class ForkServer:
    def __init__(self):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
               "RANK": "0", "WORLD_SIZE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "fork server did not answer"
        line = self.proc.stdout.readline()
        assert line, f"fork server died (rc {self.proc.poll()})"
        return line.strip()

    def start(self, fn: str, cfg: dict, pause_at: list, marker: Path) -> int:
        """Fork a job that stops at ``pause_at`` (see _SERVER), touching ``marker`` there."""
        self.proc.stdin.write(json.dumps({"fn": fn, "cfg": cfg, "pause_at": pause_at, "marker": str(marker)}) + "\n")
        self.proc.stdin.flush()
        return int(self._line(120))

    def wait(self, timeout: float = 120) -> int:
        """Wait status of the last job (os.waitpid encoding)."""
        return int(self._line(timeout).split()[1])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    s = ForkServer()
    yield s
    s.close()


def _kill_at_marker(server: "ForkServer", pid: int, marker: Path, timeout: float = 600) -> None:
    """SIGKILL ``pid`` once it has reached its pause point (``marker`` exists), then check that the kill is what
    ended it. The timeout only guards against a hang; no timing decides where the kill lands."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert not _gone(pid), f"the job ended before its pause point (wait status {server.wait()})"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    status = server.wait()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    marker.unlink()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ---------------------------------------------------------------------------------------------- harvest kills

KILL_MODES = ("before_arrays", "torn_arrays", "before_commit", "commit_tmp_written")


@pytest.mark.parametrize("seed", range(10))
def test_inprocess_kill_then_rerun_equals_uninterrupted(seed, ref_store, tiny_llama_dir, data, tmp_path, monkeypatch):
    """Die at a seeded random shard, at a seeded point of its write: before its arrays, after writing garbage
    arrays, after its real arrays but before the commit, or with the commit's temp file written but not renamed."""
    rng = random.Random(seed)
    n_shards = Store(ref_store).meta["n_shards"]
    kill_shard, mode = rng.randrange(n_shards), KILL_MODES[seed % len(KILL_MODES)]
    out = tmp_path / "store"
    real_write, real_commit = StoreWriter.write_shard, writer.write_json_atomic

    def dying_write(self, s, *args):
        if s == kill_shard and mode in ("before_arrays", "torn_arrays"):
            if mode == "torn_arrays":
                a, b = self.shard_range(s)
                self.group["acts/model.layers.1/last"][a:b] = np.full((b - a, self.meta["d_model"]), 0x3C00, np.uint16)
            raise RuntimeError("simulated kill")
        return real_write(self, s, *args)

    def dying_commit(path, obj):
        if path.parent.name == "_commits" and path.name == f"s{kill_shard:05d}.json":
            if mode == "commit_tmp_written":
                (path.parent / f".{path.name}.deadbeef.tmp").write_text(json.dumps(obj)[: len(json.dumps(obj)) // 2])
            raise RuntimeError("simulated kill")
        return real_commit(path, obj)

    monkeypatch.setattr(StoreWriter, "write_shard", dying_write)
    monkeypatch.setattr(writer, "write_json_atomic", dying_commit)
    with pytest.raises(RuntimeError, match="simulated kill"):
        harvest(_hcfg(tiny_llama_dir, data, out))
    partial = Store(out)
    assert partial.committed() == list(range(kill_shard)) and not partial.meta["complete"]
    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    monkeypatch.setattr(writer, "write_json_atomic", real_commit)
    harvest(_hcfg(tiny_llama_dir, data, out))
    assert Store(out).verify() == []
    assert_same_store(out, ref_store)


def test_sigkill_harvest_at_seeded_points_then_rerun_equals_uninterrupted(server, ref_store, tiny_llama_dir, data,
                                                                          tmp_path):
    """One store, SIGKILLed three times at seeded points (a later shard each time; before its arrays, or with its
    arrays written and its commit not), each attempt resuming the previous one's work; an uninterrupted re-run then
    finishes it identical to the reference."""
    rng = random.Random(7)
    out, marker = tmp_path / "store", tmp_path / "paused"
    cfg = {k: v for k, v in vars(_hcfg(tiny_llama_dir, data, out)).items()}
    n_shards = Store(ref_store).meta["n_shards"]
    for shard in sorted(rng.sample(range(n_shards), 3)):
        point = [shard, rng.choice(["arrays", "commit"])]
        _kill_at_marker(server, server.start("harvest", cfg, point, marker), marker)
        s = Store(out)  # the kill interrupted shard `shard`: every shard before it is committed, nothing after it
        assert s.committed() == list(range(shard)) and not s.meta["complete"], (point, s.committed())
    harvest(_hcfg(tiny_llama_dir, data, out))
    assert Store(out).verify() == []
    assert_same_store(out, ref_store)


# ---------------------------------------------------------------------------------------------- reader vs writer

def test_reader_during_harvest_sees_only_whole_committed_shards(ref_store, tiny_llama_dir, data, tmp_path, monkeypatch):
    """A harvest thread writes garbage into each shard's rows, waits until the reader has looked at the store with
    the garbage in place, then writes and commits the real rows; the main thread keeps re-opening the store: it only
    ever sees whole committed shards holding their final bits."""
    final = _bits(ref_store)
    out = tmp_path / "store"
    real_write = StoreWriter.write_shard
    looked = threading.Condition()
    checks = 0

    def torn_write(self, s, *args):
        a, b = self.shard_range(s)
        self.group["acts/model.layers.1/last"][a:b] = np.full((b - a, self.meta["d_model"]), 0x7BFF, np.uint16)
        with looked:  # two more checks: at least one whole check began after the garbage was written
            start = checks
            assert looked.wait_for(lambda: checks >= start + 2 or not reader_alive, timeout=600)
        return real_write(self, s, *args)

    monkeypatch.setattr(StoreWriter, "write_shard", torn_write)
    errors: list[BaseException] = []
    reader_alive = True

    def run():
        try:
            harvest(_hcfg(tiny_llama_dir, data, out))
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    seen: list[int] = []
    try:
        while True:
            alive = t.is_alive()
            if (out / "zarr.json").exists():
                s = Store(out)  # the layout appears atomically: whenever it exists, it opens
                before = s.committed()
                rows = s.committed_rows()  # listed again: a commit may land between the two listings
                after = s.committed()
                shards = sorted(set((rows // SHARD_ROWS).tolist()))
                assert set(before) <= set(shards) <= set(after), (before, shards, after)
                assert rows.tolist() == [r for c in shards for r in range(c * SHARD_ROWS, (c + 1) * SHARD_ROWS)]
                assert set(seen) <= set(before)  # commits never disappear
                if len(rows):
                    got = s.group["acts/model.layers.1/last"].get_orthogonal_selection((rows, slice(None)))
                    assert np.array_equal(got, final[rows]), f"uncommitted or torn data visible (shards {shards})"
                seen = after
                with looked:
                    checks += 1
                    looked.notify_all()
            if not alive:
                break
            time.sleep(0.002)
    finally:
        with looked:
            reader_alive = False
            looked.notify_all()
    t.join()
    assert not errors, errors
    assert checks >= 12 and seen == list(range(6))
    assert_same_store(out, ref_store)


# ---------------------------------------------------------------------------------------------- corrupt chunk

LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def train_store(tmp_path_factory, tiny_llama_dir) -> Path:
    """24 colour examples, 3 shards of 8 rows, chunks of 4: splits interleaved so every chunk has train rows."""
    root = tmp_path_factory.mktemp("train_store")
    p = root / "colours.jsonl"
    with p.open("w") as f:
        for i in range(24):
            lab = LABELS[i % 3]
            f.write(json.dumps({"id": f"ex{i:02d}", "text": f"The thing is {lab}, number {i}.", "source": "toy", "label": lab,
                                "task": "classification", "split": "train" if i % 4 else "val",
                                "qa": [{"question": "What colour is it?", "answer": lab}]}) + "\n")
    out = root / "store"
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(p), out=str(out), layers=[1], shard_rows=8,
                          chunk_rows=4, progress=False, device="cpu", rank=0, world=1))
    return out


def _tcfg(store, decoder, out, **kw) -> TrainConfig:
    base = dict(stores=[str(store)], out=str(out), decoder=str(decoder), adapter="mlp",
                adapter_options={"k": 2, "hidden": 32}, stage="both", stage1_steps=3, steps=3, batch_size=4,
                eval_every=2, val_items=4, checkpoint_every=1, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _corrupt_first_chunk(store: Path, shard: int) -> None:
    """Zero the header of the first compressed inner chunk of one shard file: reads of it fail in the codec."""
    f = store / "acts" / "model.layers.1" / "last" / "c" / str(shard) / "0"
    raw = bytearray(f.read_bytes())
    raw[:32] = bytes(32)
    f.write_bytes(bytes(raw))


@pytest.fixture
def corrupt_store(train_store, tmp_path) -> Path:
    import shutil
    out = tmp_path / "corrupt"
    shutil.copytree(train_store, out)
    _corrupt_first_chunk(out, 1)
    with pytest.raises(Exception):  # the codec really fails on it (a raw error, before our wrapping)
        Store(out).read_last("model.layers.1", 8, 12)
    return out


def test_stream_names_the_corrupt_shard_or_skips_it(corrupt_store):
    s = Store(corrupt_store)
    with pytest.raises(UavError) as e:
        list(ItemStream([s], "train", epochs=1))
    assert "shard 1" in e.value.problem and str(corrupt_store) in e.value.problem and "rows 9-11" in e.value.problem
    assert "--skip-corrupt" in e.value.fix

    stream = ItemStream([s], "train", epochs=2, skip_corrupt=True)
    with pytest.warns(UserWarning, match="shard 1"):
        rows = [it.row for it in stream]
    want = [r for r in range(24) if r % 4 and r not in (9, 10, 11)]
    assert sorted(rows) == sorted(want * 2) and len(stream.corrupt) == 1  # counted once, skipped every epoch


def test_trainer_refuses_a_corrupt_chunk_then_trains_with_skip_corrupt(corrupt_store, tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    cfg = _tcfg(corrupt_store, tiny_llama_dir, run)
    with pytest.raises(UavError) as e:
        train(cfg)
    assert "shard 1" in e.value.problem and str(corrupt_store) in e.value.problem
    cfg.skip_corrupt = True  # not part of the run's identity: the stopped run resumes with the flag
    with pytest.warns(UserWarning, match="skipping unreadable rows .*shard 1"):
        train(cfg)
    doc = json.loads((run / "config.json").read_text())
    assert doc["status"] == "complete"
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(rows) == 6 and all(r.get("skipped_chunks", 0) >= 1 for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_a_missing_shard_file_is_refused_or_skipped_not_trained_as_zeros(train_store, tiny_llama_dir, tmp_path):
    """A deleted data file of a committed shard reads back as zeros in zarr; the trainer must not learn from them."""
    import shutil
    store = tmp_path / "missing"
    shutil.copytree(train_store, store)
    (store / "acts" / "model.layers.1" / "last" / "c" / "1" / "0").unlink()
    with pytest.raises(UavError) as e:
        list(ItemStream([Store(store)], "train", epochs=1))
    assert "shard 1" in e.value.problem and str(store) in e.value.problem and "--skip-corrupt" in e.value.fix
    stream = ItemStream([Store(store)], "train", epochs=1, skip_corrupt=True)
    with pytest.warns(UserWarning, match="shard 1"):
        rows = sorted(it.row for it in stream)
    assert rows == [r for r in range(24) if r % 4 and not 8 <= r < 16] and len(stream.corrupt) == 2
    run = tmp_path / "run"
    with pytest.raises(UavError, match="shard 1"):
        train(_tcfg(store, tiny_llama_dir, run))
    with pytest.warns(UserWarning, match="skipping unreadable rows .*shard 1"):
        train(_tcfg(store, tiny_llama_dir, run, skip_corrupt=True))
    assert json.loads((run / "config.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------------------------------------- training kills

def test_sigkill_training_at_seeded_steps_then_resume_equals_uninterrupted(server, train_store, tiny_llama_dir,
                                                                          tmp_path):
    """Three SIGKILLs at seeded steps (of both stages; on either side of a checkpoint), each attempt resuming the
    previous one's work; the run then ends exactly like the uninterrupted one."""
    ref = tmp_path / "ref"
    train(_tcfg(train_store, tiny_llama_dir, ref))
    rng = random.Random(11)
    run, marker = tmp_path / "killed", tmp_path / "paused"
    cfg = _tcfg(train_store, tiny_llama_dir, run, checkpoint_every=2)
    for point in sorted(rng.sample([[stage, step] for stage in (1, 2) for step in (1, 2, 3)], 3)):
        _kill_at_marker(server, server.start("train", dataclasses.asdict(cfg), point, marker), marker)
        assert json.loads((run / "config.json").read_text())["status"] == "training"
    train(cfg)
    assert_same_run(ref, run)


# ---------------------------------------------------------------------------------------------- bad command lines

def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _lines(err: str) -> list[str]:
    """stderr lines but the progress bars (tqdm redraws with \\r; transformers draws one while loading weights)."""
    return [ln for ln in err.split("\n") if ln.strip() and "\r" not in ln]


@pytest.fixture
def workdir(tmp_path, monkeypatch, train_store, tiny_llama_dir):
    """A working folder holding a store, a JSONL file and an unrelated run folder that nothing may touch."""
    import shutil
    shutil.copytree(train_store, tmp_path / "store")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"id": "a", "text": "The cat sat."}) + "\n")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "config.json").write_text('{"status": "training"}')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def bad_commands(donor: str) -> dict[str, list[str]]:
    return {
        "missing-data": ["harvest", "--data", "/nope.jsonl", "--out", "new"],
        "unknown-donor": ["harvest", "--donor", "nope", "--data", "ok.jsonl", "--out", "new"],
        "bad-positions": ["harvest", "--donor", donor, "--data", "ok.jsonl", "--positions", "middle", "--out", "new"],
        "bad-layers": ["harvest", "--donor", donor, "--data", "ok.jsonl", "--layers", "a,b", "--out", "new"],
        "malformed-jsonl": ["harvest", "--donor", donor, "--data", "bad.jsonl", "--out", "new"],
        "harvest-into-store-of-other-data": ["harvest", "--donor", donor, "--data", "ok.jsonl", "--out", "store",
                                             "--layers", "1"],
        "store-info-missing": ["store", "info", "/nope"],
        "store-verify-missing": ["store", "verify", "/nope"],
        "train-missing-store": ["train", "--store", "/nope", "--out", "runs/new"],
        "train-unknown-adapter": ["train", "--store", "store", "--decoder", donor, "--adapter", "nope",
                                  "--out", "runs/new", "--device", "cpu"],
        "train-bad-stage": ["train", "--store", "store", "--stage", "3", "--out", "runs/new"],
        "train-changed-settings": ["train", "--store", "store", "--decoder", donor, "--out", "runs/old",
                                   "--device", "cpu"],
        "eval-missing-run": ["eval", "/nope"],
        "eval-unfinished-run": ["eval", "runs/old"],
        "explain-missing-run": ["explain", "--run", "/nope", "--text", "hi"],
    }


def test_bad_command_lines_fail_with_one_line_and_touch_nothing(workdir, capsys, tiny_llama_dir):
    before = _snapshot(workdir)
    failures = []
    for name, argv in bad_commands(str(tiny_llama_dir)).items():
        code, _out, err = run_uav(argv, capsys)
        lines = _lines(err)
        if code == 0 or len(lines) != 1 or "Traceback" in err or not lines[0].startswith("uav: error:"):
            failures.append((name, code, err))
        after = _snapshot(workdir)
        if after != before:
            failures.append((name, "changed files", sorted(set(after) ^ set(before)) or "mtimes"))
            before = after
    assert not failures, failures


USAGE_ERRORS = {
    "batch-size-not-int": ["harvest", "--batch-size", "abc", "--data", "ok.jsonl"],
    "train-steps-not-int": ["train", "--store", "store", "--steps", "many"],
    "unknown-command": ["frobnicate"],
    "unknown-option": ["harvest", "--frob", "1"],
}


@pytest.mark.parametrize("name", sorted(USAGE_ERRORS))
def test_usage_errors_fail_with_one_line(name, workdir, capsys):
    before = _snapshot(workdir)
    code, _out, err = run_uav(USAGE_ERRORS[name], capsys)
    assert code == 2 and len(_lines(err)) == 1 and err.startswith("uav: error:"), err
    assert _snapshot(workdir) == before


def test_huge_text_is_truncated_or_refused_cleanly(workdir, capsys, tiny_llama_dir):
    (workdir / "huge.jsonl").write_text(json.dumps({"id": "big", "text": "The cat sat. " * 80_000}) + "\n"
                                        + json.dumps({"id": "small", "text": "Hi there."}) + "\n")
    code, _out, err = run_uav(["harvest", "--donor", str(tiny_llama_dir), "--data", "huge.jsonl", "--out", "huge",
                            "--max-length", "64", "--device", "cpu"], capsys)
    assert "Traceback" not in err
    if code == 0:
        s = Store(workdir / "huge")
        assert s.verify() == [] and s.group["examples/truncated"][:].tolist() == [True, False]
        assert s.group["examples/n_tokens"][:].tolist()[0] == 64
    else:
        assert code == 2 and len(_lines(err)) == 1


def test_cli_end_to_end_error_in_a_real_process(tmp_path):
    uav = ROOT / ".venv" / "bin" / "uav"
    if not uav.exists():
        pytest.skip("no .venv/bin/uav")
    for argv in (["store", "info", str(tmp_path / "nope")], ["harvest", "--batch-size", "abc"]):
        r = subprocess.run([str(uav), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
