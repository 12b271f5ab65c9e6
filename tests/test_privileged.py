"""Privileged information: examples whose run is shown only the positions after a point of the text (``shown_from``,
or ``context`` before ``text``), the without-context rows beside them, views in the stream (token vectors in context
and a read-out pooled over the view only), training on views with the vocabulary fit of the pooled branch, and the
evaluation's privileged section with its probe per block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uav_cache.errors import UavError
from uav_cache.examples import load_examples
from uav_cache.examples.schema import ALONE, normalise, with_alone_rows
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.probe import folds_by_words, view_probe
from uav_cache.store import Store, pool
from uav_eval.protocol import EvalConfig, evaluate
from uav_train.adapters import MLPAdapter, MLPConfig
from uav_train.stream import InputSpec, ItemStream, answer_end, read_rows
from uav_train.trainer import TrainConfig, train

THINGS = ["apple", "river", "castle", "piano", "garden", "rocket"]
REMARKS = ["It came up again at dinner.", "Nobody said much after that.", "We laughed about it later."]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A thing is named in the context; the remark after it names nothing. Each thing in several wordings."""
    p = tmp_path_factory.mktemp("data") / "earlier.jsonl"
    with p.open("w") as f:
        for i in range(48):
            w = THINGS[i % len(THINGS)]
            split = ("train", "train", "val", "test")[(i // len(THINGS)) % 4]  # every thing in every split
            f.write(json.dumps({"id": f"e{i:02d}", "context": f"Number {i} says the {w} is here.",
                                "text": REMARKS[i % 3], "task": "fact", "source": "earlier", "split": split,
                                "qa": [{"question": "Which thing was named before?", "answer": w}]}) + "\n")
    return p


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama_dir, data) -> Store:
    out = tmp_path_factory.mktemp("stores") / "s"
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(out), layers=[0, 1, 2],
                          token_layers=[0, 2], positions="all", shard_rows=16, chunk_rows=8, progress=False))
    return Store(out)


def test_context_is_one_text_with_its_view_start_and_bad_offsets_are_refused():
    ex = normalise({"context": "We stayed in Peru.", "text": "People talk about it.", "qa": []}, "line 1", "1", "f")
    assert ex["text"] == "We stayed in Peru. People talk about it." and ex["text"][ex["shown_from"]:] == "People talk about it."
    for bad in (0, 40, -1, 2.5, True, "3"):
        with pytest.raises(UavError, match="shown_from"):
            normalise({"text": "We stayed in Peru.", "shown_from": bad}, "line 2", "2", "f")
    with pytest.raises(UavError, match="context"):
        normalise({"context": " ", "text": "x"}, "line 3", "3", "f")


def test_val_and_test_examples_get_their_without_context_row_once():
    exs = [{"id": s, "text": "We stayed in Peru. People talk.", "shown_from": 19, "split": s, "qa": []}
           for s in ("train", "val", "test")]
    out = with_alone_rows(exs)
    alone = [e for e in out if e.get("alone_of")]
    assert [e["alone_of"] for e in alone] == ["val", "test"] and all(e["text"] == "People talk." for e in alone)
    assert "shown_from" not in alone[0] and alone[0]["id"] == "val" + ALONE
    assert with_alone_rows(out) == out  # a saved build is not doubled


def test_a_view_shows_the_later_positions_in_context_and_pools_over_them_only(store):
    spec = InputSpec(layers=("model.layers.2",), readout="mean+last", token_layers=("model.layers.0",), views=True)
    rows = store.split_rows("train")[:5]
    ex = store.examples()
    for r, ra in zip(rows, read_rows(store, rows, spec)):
        at = ex[int(r)]["shown_from"]
        v = ra.view(at)
        later = [j for j, p in enumerate(ra.positions) if ra.spans[p][0] >= at]
        assert later and list(v.positions) == [ra.positions[j] for j in later]
        assert torch.equal(v.tokens, ra.tokens[later])  # in context: the same vectors the whole text has there
        deep = store.read_tokens("model.layers.2", int(r)).float()
        assert torch.allclose(v.pooled[0].float(), deep[later].mean(0), atol=1e-2)  # mean over the view only
        assert torch.equal(v.pooled[1], deep[later[-1]].to(v.pooled.dtype))  # its last position
        mask = torch.zeros(1, len(deep), dtype=torch.bool)
        mask[0, later] = True
        assert torch.allclose(v.pooled[0].float(), pool(deep[None], mask, "mean")[0], atol=1e-2)
        assert ra.pooled.shape[0] == 2  # the whole text: layers × read-outs
    assert answer_end("The apple and the Apple pie.", "apple") == len("The apple and the Apple")
    assert answer_end("Pineapple.", "apple") is None


def test_training_items_show_views_and_never_the_without_context_rows(store):
    spec = InputSpec(layers=("model.layers.2",), readout="mean", token_layers=("model.layers.0",), views=True)
    items = list(ItemStream([store], "val", mode="qa", epochs=1, spec=spec, views=0.0))
    assert items and all(it.view_from is not None and it.text[it.view_from:] in REMARKS for it in items)
    assert all(not it.text.startswith(tuple(REMARKS)) for it in items)  # no alone row
    assert all(set(it.x.positions) == set(np.flatnonzero(store.char_spans(it.row, it.row + 1)[0][:, 0] >= it.view_from))
               for it in items)
    plain = list(ItemStream([store], "val", mode="qa", epochs=1, spec=InputSpec(layers=("model.layers.2",), readout="mean")))
    assert len(plain) == len(items) and all(it.view_from is None for it in plain)


def test_the_vocab_fit_points_each_read_out_at_its_answers_word():
    torch.manual_seed(0)
    emb = torch.randn(50, 16)
    words = torch.tensor([3, 7, 11, 19] * 10)
    v = torch.randn(4, 12)[torch.arange(40) % 4] + 0.05 * torch.randn(40, 12)
    a = MLPAdapter(MLPConfig(k=2, hidden=8, skip=True), 12, 1, 16, 1.0)
    acc, n = a.warm_start_vocab(v, words, emb)
    assert acc == 1.0 and n == 4
    cand = torch.tensor([3, 7, 11, 19])
    assert (cand[(a.skip(v) @ emb[cand].T).argmax(1)] == words).all()  # among the answers' words, its own scores highest
    assert (a.net[-1].weight.abs().max() < 1).all()  # the MLP damped: the skip path speaks first


def test_a_run_trained_on_views_is_evaluated_on_them_beside_its_controls_and_the_probe(store, tiny_llama_dir, tmp_path):
    cfg = TrainConfig(stores=[store.path], out=str(tmp_path / "run"), decoder=str(tiny_llama_dir), stage="2", steps=4,
                      batch_size=4, layers=[2], readout="mean+last", token_layers=[0], views=0.5, pooled_fit="vocab",
                      warm_start=True, adapter_options={"k": 2, "hidden": 32, "skip": True, "center": True},
                      token_adapter_options={"hidden": 16}, eval_every=2, val_items=8, progress=False)
    run = train(cfg)
    rec = json.loads((run / "config.json").read_text())
    assert rec["train"]["views"] == 0.5 and rec["adapter"]["pooled"]["n_layers"] == 2  # mean and last of block 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("gap_fact_view" in x for x in lines)
    res = evaluate(EvalConfig(run=str(run), methods=["uav", "shuffled", "no_soft"], limit=3, similarity=False,
                              calibration=False, progress=False))
    pv = res.privileged
    assert pv["read_out_pooled_over_view"] and set(pv["by_source"]) == {"earlier"}
    d = pv["by_source"]["earlier"]
    assert d["n"] == 3 and {"view", "alone", "shuffled", "whole", "gain", "vs_shuffled"} <= set(d)
    methods = {r["method"] for r in res.items}
    assert {"view", "view_alone", "view_shuffled"} <= methods
    assert not any(r["method"] == "uav" and r["row"] in {i for i, e in enumerate(store.examples()) if e.get("alone_of")}
                   for r in res.items)  # the alone rows are controls, not texts of their own
    assert set(pv["probe"]["earlier"]["by_layer"]) == {"model.layers.0", "model.layers.2"}
    assert pv["probe"]["earlier"]["method"] == "train split"  # the test split's things are met in train
    report = res.file("report", "md").read_text()
    assert "## Privileged information" in report and "probe model.layers.2" in report
    figure = res.file("privileged", "png")
    assert f"]({figure.name})" in report and figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"


def test_the_view_probe_cross_validates_over_wordings_when_the_train_split_names_other_answers(tmp_path, tiny_llama_dir, data):
    only_test = tmp_path / "test.jsonl"
    only_test.write_text("".join(json.dumps({**json.loads(ln), "split": "test"}) + "\n"
                                 for ln in data.read_text().splitlines())
                         # train rows that name other things (a split grouped by answer): nothing a fit on them names
                         + "".join(json.dumps({"id": f"t{i}", "context": f"Number {i} says the {w} is here.",
                                               "text": REMARKS[0], "task": "fact", "source": "earlier",
                                               "split": "train", "qa": [{"question": "Which?", "answer": w}]}) + "\n"
                                   for i, w in enumerate(["zebra", "violin"] * 2)))
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(only_test), out=str(tmp_path / "s"), layers=[1],
                          positions="all", shard_rows=64, chunk_rows=8, progress=False))
    got = view_probe(Store(tmp_path / "s"), "test")["earlier"]
    assert got["method"] == "4-fold cross-validation" and got["classes"] == len(THINGS) and got["n"] == 48
    assert 0 <= got["by_layer"]["model.layers.1"] <= 1
    assert len(load_examples(str(only_test)).examples) == 100  # every test text and its without-context row


def test_probe_folds_never_fit_on_the_words_they_score():
    shown = ["It rained.", "We left.", "It rained.", "Nobody spoke.", "We left.", "Then tea.", "It rained."]
    fold = folds_by_words(shown, 2)
    for k in set(fold):
        scored = {t for t, f in zip(shown, fold) if f == k}
        assert scored and not scored & {t for t, f in zip(shown, fold) if f != k}
