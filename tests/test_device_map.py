"""A donor placed by transformers' device_map (accelerate), as a donor too large for one GPU is: the store it fills
is the one-device store, bit for bit. On this CPU-only machine the maps hold "cpu" and "disk" only, but the second
test makes accelerate install the same hooks a multi-GPU map does (weights moved in per block at run time)."""

from __future__ import annotations

import pytest
import torch

from test_harvest import _cfg, assert_same_store
from test_harvest import data, ref_store  # noqa: F401  (module fixtures reused here)
from uav_cache import harvest as hv
from uav_cache.errors import UavError
from uav_cache.harvest import harvest
from uav_cache.models import input_device, load, resolve


def test_device_map_auto_fills_the_one_device_store(ref_store, tiny_llama_dir, data, tmp_path):  # noqa: F811
    out = tmp_path / "store"
    harvest(_cfg(tiny_llama_dir, data, out, device="auto", device_map="auto"))
    assert_same_store(out, ref_store)


def test_blocks_moved_in_by_accelerate_hooks_are_captured_in_order(ref_store, tiny_llama_dir, data, tmp_path):  # noqa: F811
    """Blocks 1 and 2 live on disk and are brought in by accelerate's hooks for each forward (what a block on another
    GPU goes through): the capture hooks still see block 1's output, the deepest hook still stops the pass, and
    every row lands where the one-device harvest put it."""
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                 "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    model, tok = load(resolve(str(tiny_llama_dir)), device_map=placement, offload_folder=str(tmp_path / "offload"))
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    assert hasattr(model.model.layers[1], "_hf_hook") and input_device(model) == torch.device("cpu")
    out = tmp_path / "store"
    job = hv.plan(_cfg(tiny_llama_dir, data, out), loaded=(model, tok))
    job.run()
    job.writer.finalize()
    assert_same_store(out, ref_store)


@pytest.mark.parametrize("kw, problem", [
    (dict(device_map="auto", world=2, rank=0), "cannot run as 2 torchrun processes"),
    (dict(device_map="everywhere"), "unknown --device-map 'everywhere'"),
    (dict(device_map="auto", device="cpu"), "--device cpu would contradict it"),
])
def test_device_map_refusals_leave_nothing(tiny_llama_dir, data, tmp_path, kw, problem):  # noqa: F811
    out = tmp_path / "store"
    with pytest.raises(UavError, match=problem.replace("(", r"\(")):
        harvest(_cfg(tiny_llama_dir, data, out, **kw))
    assert not out.exists()
