"""Slow tests on the real embedded model (SmolLM2-135M shipped in a PyPI package): the store a user gets
from `uav harvest` holds exactly what transformers computes, and plain zarr + numpy read it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.models import load, resolve

pytestmark = pytest.mark.slow

TEXTS = [
    "The capital of Nepal is Kathmandu.",
    "Shares in the company rose sharply after it reported record profits for the third quarter.",
    "Maputo",
    "I can't believe the flight was cancelled again, worst airline ever!",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embedded")
    data = tmp / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "text": t, "split": "test"}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp / "store"
    harvest(HarvestConfig(donor="smollm2-135m", data=str(data), out=str(out), batch_size=4, progress=False))
    return out


def test_plain_zarr_equals_an_independent_forward_pass(store):
    g = zarr.open_group(str(store), mode="r")
    meta = g.attrs["uav_store"]
    assert meta["donor"] == "smollm2-135m" and meta["layers"] == ["model.layers.23"] and meta["dtype"] == "fp16"
    stored = g["acts/model.layers.23/last"][:].view(np.float16)
    means = g["acts/model.layers.23/mean"][:].view(np.float16)
    offsets, ids = g["tokens/offsets"][:], g["tokens/ids"][:]

    model, tok = load(resolve("smollm2-135m"))
    for i, text in enumerate(TEXTS):
        want_ids = tok(text)["input_ids"]
        assert ids[offsets[i]:offsets[i + 1]].tolist() == want_ids
        with torch.no_grad():
            hs = model(torch.tensor([want_ids]), output_hidden_states=True).hidden_states
        ref = hs[24][0, -1].half().float().numpy()  # hidden_states[i + 1] is the output of block i
        got = stored[i].astype(np.float32)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
        assert not np.allclose(got, hs[23][0, -1].half().float().numpy(), atol=1e-2), "must be block 23, not 22"
        # the mean read-out leaves out position 0, where SmolLM2 parks its attention sink (norm ~26k)
        body = hs[24][0, 1:] if len(want_ids) > 1 else hs[24][0, :1]
        ref_mean = body.mean(0).half().float().numpy()
        np.testing.assert_allclose(means[i].astype(np.float32), ref_mean, rtol=2e-3, atol=2e-3 * np.abs(ref_mean).max())
        if len(want_ids) > 1:
            assert float(hs[24][0, 0].norm()) > 20 * float(hs[24][0, 1:].norm(dim=-1).max())  # the sink it avoids


def test_store_verifies_and_describes_itself(store):
    from uav_cache.store import Store

    st = Store(str(store))
    assert st.verify() == []
    m = st.meta
    for key in ("weights_fingerprint", "tokenizer", "dataset_fingerprint", "stats", "created", "uav_version"):
        assert m[key], key
    assert m["tokenizer"]["chat_template_sha256"]  # SmolLM2-Instruct ships a ChatML template
