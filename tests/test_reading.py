"""Does the decoder read the activation? The pieces that answer it, on tiny models: stored read-outs, the probe
ceiling, the shuffled control, the paired uav − shuffled difference, and the reading-gap curve in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.probe import ceiling, probe, table
from uav_cache.store import Store, StoreWriter, to_bits
from uav_eval.protocol import EvalConfig, evaluate, reading
from uav_train.stream import Item, derangement
from uav_train.trainer import TrainConfig, train

COLOURS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A classification source (colour), a fact source, and two one-token texts."""
    p = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = []
    for i in range(48):
        colour = COLOURS[i % 3]
        split = ("train", "train", "val", "test")[(i // 2) % 4]
        if i % 2:
            rows.append({"id": f"c{i}", "text": f"The cat is {colour}, number {i}.", "task": "classification",
                         "label": colour, "source": "colour", "split": split, "qa": [{"question": "What colour is it?", "answer": colour}]})
        else:
            rows.append({"id": f"f{i}", "text": f"Paris is in France, item {i}.", "task": "fact", "source": "city",
                         "split": split, "qa": [{"question": "Which country?", "answer": "France"}]})
    rows += [{"id": "one1", "text": "Paris", "task": "fact", "source": "city", "split": "train",
              "qa": [{"question": "Which country?", "answer": "France"}]},
             {"id": "one2", "text": "cat", "task": "fact", "source": "city", "split": "train",
              "qa": [{"question": "Which country?", "answer": "France"}]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama_dir, data) -> Path:
    out = tmp_path_factory.mktemp("st") / "store"
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(out), layers=[1, 2], positions="all",
                          shard_rows=16, chunk_rows=8, progress=False))
    return out


def test_mean_readout_is_the_mean_after_the_sink_position(store):
    st = Store(store)
    assert st.readouts == ["last", "mean"]
    n_tok = st.column("n_tokens")
    sink = st.sink_only()
    assert sink.sum() >= 1 and (sink == (n_tok == 1)).all()  # "Paris" is one token of the tiny tokenizer
    for layer in st.layers:
        mean = st.read(layer, 0, st.n_rows, "mean").float()
        last = st.read(layer, 0, st.n_rows, "last").float()
        for row in range(st.n_rows):
            toks = st.read_tokens(layer, row).float()
            want = toks[1:].mean(0) if len(toks) > 1 else toks[0]
            torch.testing.assert_close(mean[row], want.half().float(), atol=2e-3, rtol=2e-3)
            assert torch.equal(last[row], toks[-1])
    assert "one-token texts" in st.info() and "read-out   mean" in st.info()
    assert not st.verify()  # the mean arrays are checksummed like the last-token ones


def test_a_store_without_the_readout_is_refused_by_name(store, tmp_path):
    with pytest.raises(UavError, match="no 'middle' read-out"):
        Store(store).read(Store(store).layers[0], 0, 1, "middle")
    with pytest.raises(UavError, match="read-out"):
        harvest(HarvestConfig(donor="smollm2-135m", data="demo", out=str(tmp_path / "x"), readouts=["mean"]))


def test_layers_resolve_from_block_indices(store):
    st = Store(store)
    assert st.resolve_layer(2) == st.resolve_layer("2") == st.layers[1]
    with pytest.raises(UavError, match="not in store"):
        st.resolve_layer("7")
    with pytest.raises(UavError, match="not in store"):
        st.resolve_layer("model.layers.7")


def _planted_store(path: Path, n: int = 300, d: int = 8, signal: float = 3.0) -> Path:
    """A store whose vectors carry the label in dimension 0 (plus noise): a probe must find it."""
    rng = np.random.default_rng(0)
    labels = [COLOURS[i % 3] for i in range(n)]
    examples = [{"id": f"r{i}", "text": "t", "task": "classification", "source": "colour", "label": labels[i],
                 "split": ("train", "train", "val", "test")[i % 4] if i < n - 12 else "test",
                 "qa": [{"question": "Which?", "answer": labels[i]}]} for i in range(n)]
    meta = {"format": "uav-activation-store", "format_version": 1, "donor": "synthetic", "weights_fingerprint": "x",
            "layers": ["L0"], "layer_indices": [0], "positions": "last", "readouts": ["last"], "dtype": "fp16",
            "d_model": d, "tokenizer": {"name": "t"}, "donor_input": "raw", "max_length": 8,
            "dataset_fingerprint": "y", "dataset": {"name": "planted", "split_sizes": {}}, "n_rows": n,
            "shard_rows": n, "chunk_rows": n, "n_shards": 1, "created": "now", "uav_version": "test"}
    w = StoreWriter.create_or_open(path, meta, examples, [[1]] * n, [False] * n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += signal * np.array([COLOURS.index(lab) for lab in labels])
    w.write_shard(0, {"L0": to_bits(torch.from_numpy(x), "fp16")})
    w.finalize()
    return path


def test_probe_finds_a_planted_label_and_not_a_missing_one(tmp_path):
    res = probe(Store(_planted_store(tmp_path / "planted")))
    assert len(res) == 1 and res[0].n_classes == 3
    assert res[0].test_acc >= 0.9 and res[0].test_lo <= res[0].test_acc <= res[0].test_hi
    none = probe(Store(_planted_store(tmp_path / "noise", signal=0.0)))
    assert none[0].test_acc < 0.7  # chance is 1/3: nothing to find, nothing found
    assert "◀ best on val" in table(res) and ceiling(res)["colour"] is res[0]


def test_probe_on_a_store_without_labels_says_so_in_one_line(tmp_path, tiny_llama_dir):
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"id": f"f{i}", "text": f"item {i}", "task": "fact", "split": "train",
                                        "qa": [{"question": "q", "answer": "a"}]}) + "\n" for i in range(4)))
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(tmp_path / "s"), layers=[1], progress=False))
    with pytest.raises(UavError, match="no classification examples"):
        probe(Store(tmp_path / "s"))


def _item(row: int, source: str) -> Item:
    return Item(torch.full((1, 1, 2), float(row)), "q", "a", row, 0, "t", source, "")


def test_derangement_stays_in_source_and_never_shows_an_item_its_own_row():
    items = [_item(r, "a") for r in range(7)] + [_item(r, "b") for r in range(10, 13)] + [_item(20, "c")]
    items.append(_item(3, "a"))  # a second question about row 3
    perm = derangement(items, seed=1)
    for i, j in enumerate(perm):
        assert items[j].source == items[i].source
        if items[i].source != "c":
            assert items[j].row != items[i].row
    assert perm[-1] == perm[3]  # both questions about row 3 see the same other row
    assert perm == derangement(items, seed=1) and perm != derangement(items, seed=2)


def test_reading_pairs_items_and_flags_only_a_clear_difference():
    def rows(method, accs):
        return [{"method": method, "row": i, "question": "q", "task": "classification", "source": "s",
                 "acc": a, "f1": a} for i, a in enumerate(accs)]

    clear = reading(rows("uav", [1] * 30) + rows("shuffled", [1, 0] * 15), n_boot=200)
    assert clear["by_task"]["classification"]["reads"] and clear["by_source"]["s"]["mean"] == pytest.approx(0.5)
    same = reading(rows("uav", [1, 0] * 15) + rows("shuffled", [0, 1] * 15), n_boot=200)
    assert not same["by_task"]["classification"]["reads"]
    assert reading(rows("uav", [1] * 3)) == {}  # no shuffled: nothing to say


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, store) -> Path:
    root = tmp_path_factory.mktemp("run")
    return train(TrainConfig(stores=[str(store)], out=str(root / "run"), decoder=str(tiny_llama_dir), adapter="mlp",
                             adapter_options={"k": 2, "hidden": 32, "center": True}, stage="2", steps=4, batch_size=4,
                             eval_every=2, val_items=6, layers=["2"], readout="mean", progress=False))


def test_training_logs_the_reading_gap_and_plots_it(run, store):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in vals] == [0, 2, 4]
    for r in vals:
        assert r["reading_gap"] == pytest.approx(r["val_loss_shuffled"] - r["val_loss"])
        assert r["val_loss_shuffled"] != r["val_loss"]  # the shuffled items really see other activations
    assert (run / "loss.png").stat().st_size > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["layers"] == [Store(store).layers[1]] and cfg["train"]["readout"] == "mean"


def test_centring_adapter_subtracts_the_train_mean(run, store):
    from uav_train.run import load_adapter

    adapter, _ = load_adapter(run)
    st = Store(store)
    rows = st.split_rows("train")
    want = st.read_rows(st.layers[1], rows, "mean").float().mean(0)
    torch.testing.assert_close(adapter.pooled.shift[0], want, atol=1e-4, rtol=1e-4)


def test_shuffled_control_shows_each_item_another_items_activation(run):
    res = evaluate(EvalConfig(run=str(run), methods=["uav", "shuffled"], similarity=False, n_boot=50, progress=False))
    items = {(r["method"], r["row"], r["question"]): r for r in res.items}
    uav = [r for r in res.items if r["method"] == "uav"]
    for r in uav:
        assert items[("shuffled", r["row"], r["question"])]["gold"] == r["gold"]  # same prompt: only x differs
    for src in {r["source"] for r in uav}:
        # one question per row and the same question across the source: the shuffled answers are the uav
        # answers of the other rows, so within a source the two are the same answers, permuted
        mine = [r for r in uav if r["source"] == src]
        assert sorted(items[("shuffled", r["row"], r["question"])]["raw"] for r in mine) == sorted(r["raw"] for r in mine)
    assert res.reading["by_task"].keys() == {r["task"] for r in uav}
    assert res.probe["colour"]["run"]["readout"] == "mean"
    md = res.file("report", "md").read_text()
    assert "Does the decoder read the activation?" in md and "uav − shuffled" in md


def test_warm_start_fits_the_skip_path_in_closed_form():
    from uav_train.adapters import adapter_config, build_adapter

    torch.manual_seed(0)
    ad = build_adapter(adapter_config("mlp", k=2, hidden=16, skip=True), 8, 1, 6, out_norm=1.0)
    v = torch.randn(200, 8)
    a = torch.randn(8, 6)
    r2 = ad.warm_start(v, v @ a + 0.5, ridge=1e-6)
    assert r2 > 0.999
    torch.testing.assert_close(ad.skip(v), v @ a + 0.5, atol=1e-3, rtol=1e-3)
    with pytest.raises(UavError, match="skip = true"):
        build_adapter(adapter_config("mlp", k=2, hidden=16), 8, 1, 6, out_norm=1.0).warm_start(v, v @ a)


def test_warm_start_settings_are_checked_before_training(store, tiny_llama_dir, tmp_path):
    cfg = TrainConfig(stores=[str(store)], out=str(tmp_path / "r"), decoder=str(tiny_llama_dir), stage="2",
                      adapter_options={"k": 2, "hidden": 16}, warm_start=True, progress=False)
    with pytest.raises(UavError, match="warm_start"):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_source_weights_repeat_or_thin_a_source_per_epoch(store):
    from uav_train.stream import ItemStream

    st = Store(store)

    def count(weights):
        items = list(ItemStream([st], "train", epochs=1, weights=weights, seed=3))
        return {s: sum(it.source == s for it in items) for s in ("colour", "city")}

    base = count({})
    assert count({"colour": 3}) == {"colour": 3 * base["colour"], "city": base["city"]}
    half = count({"city": 0.5})
    assert half["colour"] == base["colour"] and 0 < half["city"] < base["city"]
    with pytest.raises(UavError, match="source weights"):
        ItemStream([st], "train", weights={"city": 0})


def test_compare_puts_reading_and_probe_beside_each_run(run, tmp_path):
    from uav_eval.report import compare

    res = evaluate(EvalConfig(run=str(run), methods=["uav", "shuffled", "no_soft"], similarity=False, n_boot=50,
                              progress=False))
    table = compare([run], tmp_path / "cmp")
    header = table.splitlines()[0]
    assert "uav − shuffled" in header and "probe (run's layer)" in header and "reads" in header
    # the row names the evaluation's settings (not the standard controls) as its files do
    rows = [r for r in table.splitlines() if r.startswith(f"| {run.name} ({res.tag}) |") and "| classification |" in r]
    assert len(rows) == 1 and rows[0].count("[") >= 4  # uav, shuffled, difference, no_soft: all with intervals
    assert "Does the decoder read the activation?" in (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_a_misspelt_control_is_refused_before_the_decoder_loads(run, monkeypatch):
    import uav_eval.protocol as protocol

    monkeypatch.setattr(protocol, "load_run", lambda *a, **k: pytest.fail("loaded the decoder for a bad control"))
    with pytest.raises(UavError, match=r"unknown control\(s\) \['shufled'\].*shuffled"):
        evaluate(EvalConfig(run=str(run), methods=["uav", "shufled"], progress=False))


@pytest.mark.parametrize("every", [1, 100], ids=["from-checkpoint", "before-first-checkpoint"])
def test_demo_settings_resume_bit_identical(every, store, tiny_llama_dir, tmp_path):
    """The demo's recipe shape (mean read-out, centring, warm start, source weights, length-grouped batches, stage 2
    only): a killed run re-run with the same command ends exactly like an uninterrupted one."""
    from helpers import assert_same_tensors

    def cfg(out, **kw):
        return TrainConfig(stores=[str(store)], out=str(out), decoder=str(tiny_llama_dir), adapter="mlp", stage="2",
                           adapter_options={"k": 2, "hidden": 16, "center": True, "skip": True}, warm_start=True,
                           readout="mean", layers=[2], source_weights={"colour": 2, "city": 0.5}, steps=4,
                           batch_size=4, length_groups=2, eval_every=2, val_items=6, progress=False, **kw)

    ref = train(cfg(tmp_path / "ref"))
    summary = json.loads((ref / "config.json").read_text())["summary"]
    assert summary[0]["warm_start_items"] > 0 and -1 <= summary[0]["warm_start_r2"] <= 1

    def stop_at_3(stage, step, _loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "run", checkpoint_every=every), on_step=stop_at_3)
    run = train(cfg(tmp_path / "run", checkpoint_every=every))
    for f in ("adapter.safetensors", "lora/adapter_model.safetensors"):
        assert_same_tensors(ref / f, run / f)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "items_per_s"}  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(run) == strip(ref)
