"""Harvest and training under torchrun, 2 CPU processes (gloo), against one-process results (tiny models).

Each test launches real `torchrun --nproc-per-node 2 -m …` jobs, so they are the slowest fast tests (~10-20 s each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_harvest import SHARD_ROWS, _cfg, assert_same_store
from test_harvest import data, ref_store  # noqa: F401  (module fixtures reused here)
from uav_cache.harvest import harvest
from uav_train.trainer import TrainConfig, train

# Two processes on the same global batch take the same steps up to float rounding (other padding widths, other
# summation order). Measured: weights within 3e-8 after 6 AdamW steps, logged losses within 1e-7 relative. A run
# whose ranks each normalise their own half (the mistake DDP invites) misses these by orders of magnitude.
WEIGHT_ATOL = 1e-6
LOSS_RTOL = 1e-5


def torchrun(module: str, *args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        "-m", module, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_two_process_harvest_equals_one_process_and_another_n_finishes_it(ref_store, tiny_llama_dir, data,  # noqa: F811
                                                                          tmp_path):
    out = tmp_path / "store"
    r = torchrun("uav_cache.harvest", "--donor", str(tiny_llama_dir), "--data", data, "--out", str(out),
                 "--layers", "1", "--shard-rows", str(SHARD_ROWS), "--batch-size", "4", "--device", "cpu",
                 "--threads", "1")
    assert r.stdout.count("committed 6/6  (complete)") == 1  # rank 0 alone prints, after every rank is done
    assert_same_store(out, ref_store)  # bit-identical to the one-process harvest with the same thread count (1)
    # lose rank 0's shards (0, 2, 4), then finish with one process: only those are redone
    kept = {s: (out / "_commits" / f"s{s:05d}.json").stat().st_mtime_ns for s in (1, 3, 5)}
    for s in (0, 2, 4):
        (out / "_commits" / f"s{s:05d}.json").unlink()
    harvest(_cfg(tiny_llama_dir, data, out))
    assert {s: (out / "_commits" / f"s{s:05d}.json").stat().st_mtime_ns for s in (1, 3, 5)} == kept
    assert_same_store(out, ref_store)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("recipe") / "ddp.toml"
    p.write_text('[train]\nadapter = "mlp"\nadapter_options = {k = 2, hidden = 32}\nstage = "both"\n'
                 "stage1_steps = 3\nsteps = 3\nbatch_size = 4\neval_every = 2\nval_items = 4\ncheckpoint_every = 1\n"
                 "progress = false\n[train.lora]\ndropout = 0.0\n")
    return p


def _cli(recipe: Path, store: Path, decoder: Path, out: Path, *extra: str) -> list[str]:
    return ["--recipe", str(recipe), "--store", str(store), "--decoder", str(decoder), "--out", str(out),
            "--device", "cpu", *extra]


def _one(recipe: Path, store: Path, decoder: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig.from_recipe(recipe, stores=[str(store)], decoder=str(decoder), out=str(out), device="cpu", **kw)


def assert_close_runs(a: Path, b: Path, files: tuple[str, ...]) -> None:
    for f in files:
        ta, tb = load_file(str(a / f)), load_file(str(b / f))
        assert ta.keys() == tb.keys() and ta
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], atol=WEIGHT_ATOL, rtol=0, msg=f"{f} {k}")

    def losses(p: Path) -> list[tuple]:
        rows = [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return [(r["stage"], r["step"], r.get("loss"), r.get("val_loss")) for r in rows]

    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]  # one log line per step, written once (rank 0)
    for x, y in zip(la, lb):
        for u, v in zip(x[2:], y[2:]):
            assert (u is None) == (v is None) and (u is None or abs(u - v) <= LOSS_RTOL * abs(u)), (x, y)
    assert json.loads((b / "config.json").read_text())["status"] == "complete"


def one_and_stopped(recipe, store, model, tmp_path) -> tuple[Path, Path]:
    """A finished one-process run (tmp/one) and the same run stopped in stage 1 at step 2 (tmp/two, a checkpoint)."""
    ref = tmp_path / "one"
    train(_one(recipe, store, model, ref))

    class Stop(Exception):
        pass

    def stop_at(stage: int, step: int, loss: float) -> None:
        if (stage, step) == (1, 2):
            raise Stop

    run = tmp_path / "two"
    with pytest.raises(Stop):
        train(_one(recipe, store, model, run), on_step=stop_at)
    assert (run / "checkpoint").exists()
    return ref, run


def test_ddp_resumes_a_one_process_run_and_ends_where_one_process_ends(recipe, ref_store, tiny_llama_dir,  # noqa: F811
                                                                      tmp_path):
    """Stop a one-process run in stage 1, resume it on two processes (stage 1, then stage 2 with a LoRA):
    the result matches the uninterrupted one-process run."""
    ref, run = one_and_stopped(recipe, ref_store, tiny_llama_dir, tmp_path)
    r = torchrun("uav_train.trainer", *_cli(recipe, ref_store, tiny_llama_dir, run))
    assert r.stdout.count("run complete") == 1
    assert_close_runs(ref, run, ("adapter.safetensors", "stage1/adapter.safetensors", "lora/adapter_model.safetensors"))


def test_ddp_adapter_only_transfer_with_a_frozen_lora(recipe, ref_store, tiny_llama_dir, tmp_path):  # noqa: F811
    """The frozen LoRA takes no gradient; DDP must train the new adapter alone, as one process does."""
    base = tmp_path / "base"
    train(_one(recipe, ref_store, tiny_llama_dir, base, stage1_steps=1, steps=1))
    one, two = tmp_path / "one", tmp_path / "two"
    train(_one(recipe, ref_store, tiny_llama_dir, one, stage="2", frozen_decoder=str(base)))
    torchrun("uav_train.trainer", *_cli(recipe, ref_store, tiny_llama_dir, two, "--stage", "2",
                                        "--frozen-decoder", str(base)))
    assert_close_runs(one, two, ("adapter.safetensors",))
    frozen = load_file(str(base / "lora" / "adapter_model.safetensors"))
    for run in (one, two):  # the LoRA the transfer run keeps is the base run's, untouched
        if (run / "lora").exists():
            kept = load_file(str(run / "lora" / "adapter_model.safetensors"))
            assert kept.keys() == frozen.keys() and all(torch.equal(kept[k], frozen[k]) for k in kept)


def test_a_batch_that_does_not_split_over_the_processes_is_refused(recipe, ref_store, tiny_llama_dir,  # noqa: F811
                                                                   tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3", "-m",
                        "uav_train.trainer", *_cli(recipe, ref_store, tiny_llama_dir, tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert "batch_size 4 (the global batch) does not split over 3 processes" in r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
