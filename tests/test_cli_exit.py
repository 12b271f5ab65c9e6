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
import subprocess
import sys
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
    """stderr without progress bars (tqdm's, and transformers' "Loading weights: 100%|…" when not on a terminal)."""
    return [ln for ln in err.split("\n") if ln.strip() and "\r" not in ln and "%|" not in ln]


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


# ---------------------------------------------------------------------------------------------- cheap commands

def test_data_build(work):
    refused(uav("data", "build", "--recipe", "nope", cwd=work), "unknown recipe 'nope'")
    ok(r := uav("data", "build", "--recipe", "demo", "--out", "data/demo", cwd=work))
    assert (work / "data" / "demo" / "examples.jsonl").is_file() and "fingerprint" in r.stdout


def test_models(work):
    ok(r := uav("models", cwd=work))
    assert "smollm2-135m" in r.stdout
    refused(uav("models", "extra", cwd=work), "unexpected extra argument")


def test_bench(work):
    """A real bench needs the embedded SmolLM2 (minutes): only its refusal and its help run here."""
    refused(uav("bench", "--scale", "0", "--out", "b", cwd=work), "--scale must be > 0")
    assert not (work / "b").exists()
    ok(uav("bench", "--help", cwd=work))


# ---------------------------------------------------------------------------------------------- store

def test_store_info(work):
    ok(r := uav("store", "info", "store", cwd=work))
    assert "committed 3/3" in r.stdout
    refused(uav("store", "info", "nope", cwd=work), "nope is not a uav activation store")
    shutil.copytree(work / "store", work / "stray")
    shutil.copy(work / "stray" / "_commits" / "s00000.json", work / "stray" / "_commits" / "s00000 (copy).json")
    ok(r := uav("store", "info", "stray", cwd=work))  # was a ValueError traceback
    assert "committed 3/3" in r.stdout


def test_verify_exits_1_on_a_broken_store_and_0_on_a_healthy_one(work):
    r = uav("store", "verify", "broken", cwd=work)
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert lines(r.stderr) and all(ln.startswith("BROKEN shard 1") for ln in lines(r.stderr)), r.stderr
    ok(r := uav("store", "verify", "store", cwd=work))
    assert r.stdout.startswith("ok: 3 shards")


# ---------------------------------------------------------------------------------------------- harvest

def test_harvest(work, tiny_llama_dir):
    args = ["harvest", "--donor", tiny_llama_dir, "--data", "colours.jsonl", "--device", "cpu", "--shard-rows", "8"]
    for bad, words in ((["--max-length", "-3"], "--max-length must be ≥ 1"),
                       (["--layers", "1,1"], "names a block twice"),
                       (["--device", "cuda:3"], "not available on this machine")):
        refused(uav(*args, "--out", "new", *bad, cwd=work), words)
        assert not [p for p in work.iterdir() if p.name.startswith((".new", "new"))]  # no store, no .creating
    ok(uav(*args, "--out", "new", "--layers", "1", cwd=work))
    assert (work / "new" / "_commits" / "s00002.json").is_file()


# ---------------------------------------------------------------------------------------------- train

def test_train(work, tiny_llama_dir):
    args = ["train", "--store", "store", "--decoder", tiny_llama_dir, "--device", "cpu"]
    refused(uav(*args, "--out", "runs/bad", "--batch-size", "0", cwd=work), "batch_size must be ≥ 1")
    (work / "typo.toml").write_text("[trian]\nsteps = 1\n")
    refused(uav(*args, "--out", "runs/bad", "--recipe", "typo.toml", cwd=work), "unknown section(s) ['trian']")
    assert not (work / "runs" / "bad").exists()
    ok(r := uav(*args, "--out", "runs/ok", "--stage1-steps", "1", "--steps", "1", "--batch-size", "4", cwd=work))
    assert "run complete" in r.stdout
    assert json.loads((work / "runs" / "ok" / "config.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------------------------------------- eval, explain

def test_eval(work):
    refused(uav("eval", "run", "--limit", "0", cwd=work), "--limit must be ≥ 1")
    ok(r := uav("eval", "run", "--limit", "1", "--controls", "none", "--no-similarity", "--device", "cpu", cwd=work))
    [results] = (work / "run").glob("results-limit1-*.json")  # no control, no similarity: named by those settings
    assert results.name.replace("results", "report").replace(".json", ".md") in r.stdout
    assert not (work / "run" / "results.json").exists()


def test_explain(work, tiny_llama_dir):
    refused(uav("explain", "--run", "run", "--text", "hi", "--device", "foo", cwd=work), "unknown device 'foo'")
    ok(r := uav("explain", "--run", "run", "--text", "The thing is red.", "--donor", tiny_llama_dir,
                "--max-new-tokens", "2", "--device", "cpu", cwd=work))
    assert r.stdout.startswith("Q: What does this representation encode?")


# ---------------------------------------------------------------------------------------------- demo

def test_demo(work, tiny_llama_dir):
    refused(uav("demo", "--recipe", "missing.toml", cwd=work), "recipe missing.toml not found")
    (work / "demo.toml").write_text(f"""
[data]
recipe = "colours.jsonl"

[[donors]]
name = "{tiny_llama_dir}"
store = "demo/store"
layers = [1]
shard_rows = 8
chunk_rows = 4
progress = false

[train]
stores = ["demo/store"]
decoder = "{tiny_llama_dir}"
adapter = "affine"
stage1_steps = 1
steps = 1
batch_size = 4
eval_every = 1
val_items = 4
progress = false

[[runs]]
name = "tiny"
out = "demo/runs/tiny"

[eval]
limit = 1
controls = []
compare_dir = "demo/cmp"
""")
    ok(r := uav("demo", "--recipe", "demo.toml", cwd=work))
    assert list((work / "demo" / "runs" / "tiny").glob("report-limit1-*.md"))
    assert (work / "demo" / "cmp" / "compare.md").is_file()


# ---------------------------------------------------------------------------------------------- interrupts

def test_kill_int_exits_130_even_from_a_shell_without_job_control(work, tiny_llama_dir):
    """`uav train … & kill -INT $!` in a script: bash starts the job with SIGINT ignored, and a dropped Exit(130)
    used to exit 0. An interrupt is not a success."""
    script = (f"{UAV} train --store store --decoder {tiny_llama_dir} --out runs/int --stage1-steps 100000 "
              "--steps 1 --device cpu 2>err.txt & pid=$!\n"
              "for i in $(seq 600); do grep -q 'stage 1' err.txt 2>/dev/null && break; sleep 0.2; done\n"
              "kill -INT $pid; wait $pid; echo \"rc=$?\"\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    err = (work / "err.txt").read_text()
    assert r.stdout.strip() == "rc=130", (r.stdout, err)
    assert "uav: interrupted" in err and "Traceback" not in err, err
