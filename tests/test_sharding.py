"""FSDP2 (``sharding = "fsdp"``) under torchrun, 2 CPU processes (gloo): the decoder blocks are sharded, and the
run ends where the one-process run ends, within the tolerance of the DDP tests."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from test_distributed import _cli, _one, assert_close_runs, one_and_stopped, recipe, torchrun  # noqa: F401
from test_harvest import data, ref_store  # noqa: F401  (module fixtures reused here)
from uav_train.trainer import train

RUN_FILES = ("adapter.safetensors", "stage1/adapter.safetensors", "lora/adapter_model.safetensors")


def test_fsdp_resumes_a_one_process_run_and_ends_where_one_process_ends(recipe, ref_store, tiny_llama_dir,  # noqa: F811
                                                                       tmp_path):
    """Stage 1 sharded from a one-process checkpoint, then stage 2's LoRA added onto the sharded blocks: the same
    weights and losses as the uninterrupted one-process run, and each rank held about half of the blocks."""
    ref, run = one_and_stopped(recipe, ref_store, tiny_llama_dir, tmp_path)
    r = torchrun("uav_train.trainer", *_cli(recipe, ref_store, tiny_llama_dir, run, "--sharding", "fsdp"))
    assert r.stdout.count("run complete") == 1
    held = [ln for ln in r.stderr.splitlines() if "FSDP2:" in ln]
    assert len(held) == 1  # rank 0 says what it holds: half the blocks, the embeddings whole
    assert 0.4 < float(held[0].split("holds ")[1].split()[0]) < 0.8, held
    assert_close_runs(ref, run, RUN_FILES)


def test_fsdp_bf16_trains_with_fp32_lora(recipe, ref_store, tiny_llama_dir, tmp_path):  # noqa: F811
    """Frozen bf16 weights sharded, fp32 LoRA and adapter beside them in the same blocks (FSDP2 gathers mixed
    dtypes), under autocast: the run completes and saves fp32 weights."""
    run = tmp_path / "bf16"
    torchrun("uav_train.trainer", *_cli(recipe, ref_store, tiny_llama_dir, run, "--sharding", "fsdp",
                                        "--precision", "bf16", "--stage", "2"))
    for f in ("adapter.safetensors", "lora/adapter_model.safetensors"):
        assert all(v.dtype.is_floating_point and v.dtype.itemsize == 4 for v in load_file(str(run / f)).values())
