"""Every `uav` command through the real console script, in a subprocess: the exit code is right on every path.

0 only for success; 1 for "checked and found broken" (store verify); 2 for usage errors and refused inputs, with
one `uav: error:` line; 130 for an interrupt. Scripts gate on these (`uav store verify && uav train …`), so
they are tested where a script sees them. Each subprocess imports torch (~2–5 s): the calls are few, the cheap
ones first, and the stores and runs they read are built in-process by fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uav_cache.harvest import HarvestConfig, harvest
from uav_train.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
UAV = Path(sys.executable).parent / "uav"
LABELS = ["red", "green", "blue"]

pytestmark = pytest.mark.skipif(not UAV.exists(), reason=f"no console script at {UAV}")


def uav(*argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `uav` script on this checkout's code (PYTHONPATH), offline, one thread."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([str(UAV), *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with \\r) and library warnings' source lines."""
    return [ln for ln in err.split("\n") if ln.strip() and "\r" not in ln]


def refused(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with exactly one `uav: error:` line (naming ``words``) and no traceback."""
    msg = lines(r.stderr)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert len(msg) == 1 and msg[0].startswith("uav: error:"), r.stderr
    for w in words:
        assert w in msg[0], (w, msg[0])


def ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stderr)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_llama_dir) -> Path:
    """A folder with colours.jsonl, a store of it, a copy with a corrupted shard, and a finished tiny run."""
    root = tmp_path_factory.mktemp("cli")
    with (root / "colours.jsonl").open("w") as f:
        for i in range(24):
            lab = LABELS[i % 3]
            split = ("train", "train", "val", "test")[i % 4]
            f.write(json.dumps({"id": f"ex{i:02d}", "text": f"The thing is {lab}, number {i}.", "label": lab,
                                "task": "classification", "source": "toy", "split": split,
                                "qa": [{"question": "What colour is it?", "answer": lab}]}) + "\n")
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(root / "colours.jsonl"), out=str(root / "store"),
                          layers=[1], shard_rows=8, chunk_rows=4, progress=False, device="cpu", rank=0, world=1))
    shutil.copytree(root / "store", root / "broken")
    chunk = root / "broken" / "acts" / "model.layers.1" / "last" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[:32] = bytes(32)
    chunk.write_bytes(bytes(raw))
    train(TrainConfig(stores=[str(root / "store")], out=str(root / "run"), decoder=str(tiny_llama_dir), adapter="mlp",
                      adapter_options={"k": 2, "hidden": 32}, stage1_steps=1, steps=1, batch_size=4, eval_every=1,
                      val_items=4, progress=False, device="cpu"))
    return root


# ---------------------------------------------------------------------------------------------- store verify

def test_verify_exits_1_on_a_broken_store_and_0_on_a_healthy_one(work):
    r = uav("store", "verify", "broken", cwd=work)
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert lines(r.stderr) and all(ln.startswith("BROKEN shard 1") for ln in lines(r.stderr)), r.stderr
    ok(r := uav("store", "verify", "store", cwd=work))
    assert r.stdout.startswith("ok: 3 shards")


# ---------------------------------------------------------------------------------------------- interrupts

def test_ctrl_c_exits_130(work, tiny_llama_dir):
    """SIGINT mid-training (what Ctrl-C sends) is an interrupt, not a success."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([str(UAV), "train", "--store", "store", "--decoder", str(tiny_llama_dir), "--out", "runs/int",
                          "--stage1-steps", "100000", "--steps", "1", "--device", "cpu"],
                         cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        deadline = time.monotonic() + 180
        while "stage 1" not in err:  # the progress bar: training has started
            assert time.monotonic() < deadline and p.poll() is None, err
            err += os.read(p.stderr.fileno(), 4096).decode(errors="replace")
        p.send_signal(signal.SIGINT)
        err += p.stderr.read()
        assert p.wait(timeout=120) == 130, err
        assert "uav: interrupted" in err and "Traceback" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
