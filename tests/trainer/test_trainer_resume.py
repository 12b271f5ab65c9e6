"""Training runs resume exactly, refuse changed or wrong settings before writing, and check recipe sections."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_same_run
import torch

from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_train import stream as stream_mod
from uav_train.stream import ItemStream
from uav_train.trainer import LoraSettings, TrainConfig, train
from trainer_kit import cfg_for, harvest_store, split_of


# ---------------------------------------------------------------------------------------------- resume

def interrupt_at(stage: int, step: int):
    def on_step(s, k, _loss):
        if (s, k) == (stage, step):
            raise KeyboardInterrupt
    return on_step


@pytest.mark.parametrize("stage,step,every", [(1, 2, 1), (2, 2, 1), (2, 1, 100)],
                         ids=["stage1", "stage2", "stage2-before-first-checkpoint"])
def test_resume_equals_uninterrupted(stage, step, every, tmp_path, run_a, stores, tiny_llama_dir):
    """Kill (KeyboardInterrupt from on_step) and re-run the same command: the result is bit-identical to run A.
    checkpoint_every is not part of a run's identity, so run A (checkpointing every step) is the reference."""
    ref, _ = run_a
    run = tmp_path / f"resumed{stage}"
    cfg = cfg_for(stores, tiny_llama_dir, run, checkpoint_every=every)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=interrupt_at(stage, step))
    doc = json.loads((run / "config.json").read_text())
    assert doc["status"] == "training"
    if every == 1:
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        assert (state["stage"], state["step"], state["consumed"]) == (stage, step - 1, 4 * (step - 1))
    else:
        assert not (run / "checkpoint").exists() and (run / "stage1" / "adapter.safetensors").exists()
    assert not (run / "adapter.safetensors").exists()

    # a changed setting is refused, and leaves the interrupted run resumable
    with pytest.raises(UavError, match="lr_adapter"):
        train(dataclasses.replace(cfg, lr_adapter=1e-3))

    train(cfg)
    assert_same_run(ref, run)


def test_changed_config_on_a_finished_run_is_refused(run_a, stores, tiny_llama_dir):
    run, _ = run_a
    with pytest.raises(UavError, match="different settings"):
        train(cfg_for(stores, tiny_llama_dir, run, steps=5))


def test_a_run_on_a_reharvest_storeed_store_is_not_done(tmp_path, stores, tiny_llama_dir, data, monkeypatch):
    """"Already complete" compares what the stores hold, not their paths: other data harvested into the same
    folder makes the old run stale, and it is refused (not silently kept, not silently retrained)."""
    shutil.copytree(stores["a"], tmp_path / "st_x")
    monkeypatch.chdir(tmp_path)
    cfg = cfg_for(stores, tiny_llama_dir, "run", stores=["st_x"], stage1_steps=1, steps=1)
    train(cfg)
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["stores"][0]
    assert rec["path"] == "st_x" and rec["abspath"] == str((tmp_path / "st_x").resolve())
    before = (tmp_path / "run" / "adapter.safetensors").stat().st_mtime_ns
    assert train(cfg) == Path("run")  # unchanged store: a no-op
    shutil.rmtree(tmp_path / "st_x")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))
    harvest_store(tiny_llama_dir, other, tmp_path / "st_x")
    with pytest.raises(UavError, match="trained on other data.*dataset_fingerprint"):
        train(cfg)
    assert (tmp_path / "run" / "adapter.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("settings, problem", [
    ({"no_lora": "false"}, "no_lora = 'false' must be true or false"),
    ({"steps": "ten"}, "steps = 'ten' must be an integer"),
    ({"batch_size": 2.5}, "batch_size = 2.5 must be an integer"),
    ({"lora": "big"}, "lora = 'big' must be a table"),
    ({"lora": {"rank": 4}}, "unknown LoRA setting(s) ['rank']"),
    ({"lora": {"r": "8"}}, "r = '8' must be an integer"),
    ({"stage": 2}, "stage = 2 must be a string"),
    ({"stores": [1]}, "must be a list of strings"),
    ({"adapter_options": {"k": "8"}}, "k = '8' must be an integer"),
])
def test_settings_of_the_wrong_type_are_refused(settings, problem, tmp_path, stores, tiny_llama_dir):
    """Recipe values are checked against the dataclass annotations: "false" is not false, 2 is not "2"."""
    with pytest.raises(UavError) as e:
        TrainConfig.from_dict({"stores": [stores["a"]], "out": str(tmp_path / "run"), **settings})
    assert problem in e.value.problem


@pytest.mark.parametrize("settings, problem", [
    ({"stage1_steps": 0, "steps": 0}, "stage1_steps must be ≥ 1, got 0"),
    ({"stage": "2", "steps": 0}, "steps must be ≥ 1, got 0"),
    ({"stage": "3"}, 'stage must be "1", "2" or "both"'),
    ({"batch_size": -1}, "batch_size must be ≥ 1, got -1"),
    ({"batch_size": 0}, "batch_size must be ≥ 1, got 0"),
    ({"lr_lora": 0.0}, "lr_lora must be > 0"),
    ({"eval_every": 0}, "eval_every must be ≥ 1"),
    ({"yesno": -1.0}, "yesno must be ≥ 0"),
    ({"init_from": "runs/a", "frozen_decoder": "runs/b", "stage": "2"}, "cannot also load a frozen_decoder"),
    ({"lora": LoraSettings(r=0)}, "lora.r must be ≥ 1"),
    ({"device": "foo"}, "unknown device 'foo'"),
    ({"device": "cuda:7"}, "device 'cuda:7' is not available on this machine"),
])
def test_settings_that_train_nothing_or_crash_are_refused_before_writing(settings, problem, tmp_path, stores,
                                                                         tiny_llama_dir):
    """Each would otherwise end "run complete" untrained, or crash mid-run leaving config.json at "training"."""
    cfg = cfg_for(stores, tiny_llama_dir, tmp_path / "run", **settings)
    with pytest.raises(UavError) as e:
        train(cfg)  # built directly: train() checks
    assert problem in e.value.problem
    with pytest.raises(UavError):  # and so does from_dict (recipes, the CLI)
        TrainConfig.from_dict(dataclasses.asdict(cfg))
    assert not (tmp_path / "run").exists()


def test_recipe_sections_are_checked(tmp_path, stores, tiny_llama_dir):
    p = tmp_path / "r.toml"
    p.write_text(f'[trian]\nsteps = 1\n[train]\nstores = ["{stores["a"]}"]\n')
    with pytest.raises(UavError, match=r"unknown section\(s\) \['trian'\]"):
        TrainConfig.from_recipe(p)
    p.write_text('[train]\nsteps = 3\n[train.lora]\nrank = 4\n')
    with pytest.raises(UavError, match=r"unknown LoRA setting\(s\) \['rank'\]"):
        TrainConfig.from_recipe(p)
    p.write_text('[train]\nsteps = 3\nstage = "2"\n[train.lora]\nr = 4\n')
    cfg = TrainConfig.from_recipe(p, batch_size=2)
    assert cfg.steps == 3 and cfg.lora.r == 4 and cfg.batch_size == 2


# ---------------------------------------------------------------------------------------------- stores

def test_mismatched_and_missing_stores(tmp_path, stores, tiny_llama_dir):
    with pytest.raises(UavError, match="does not match"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "mix", stores=[stores["a"], stores["b"]]))
    with pytest.raises(UavError, match="not found"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "missing", stores=[stores["a"], str(tmp_path / "nope")]))
    with pytest.raises(UavError, match="no --store"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "none", stores=[]))
    with pytest.raises(UavError, match="unknown adapter"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "bad", adapter="nope"))
    # same donor, but the first store's layers are not all in the second: refused up front
    with pytest.raises(UavError, match="not in store"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "layers", stores=[stores["seq"], stores["a"]]))
    with pytest.raises(UavError, match="pooled read-outs only"):  # every store needs token vectors for token_layers
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "pos", stores=[stores["seq"], stores["a"]],
                      token_layers=["model.layers.1"], layers=["model.layers.1"]))
    for name in ("mix", "missing", "none", "bad", "layers", "pos"):
        assert not (tmp_path / name).exists(), name  # refused before anything is written


def rows_of(stream: ItemStream) -> list[int]:
    return [it.row for it in stream]


def test_stream_order_is_deterministic_per_seed(stores):
    st = Store(stores["a"])
    train_rows = sorted(int(r) for r in st.split_rows("train"))
    assert len(train_rows) == 32 and all(split_of(r) == "train" for r in train_rows)
    a = rows_of(ItemStream([st], "train", seed=3, epochs=1, shuffle_buffer=4))
    b = rows_of(ItemStream([st], "train", seed=3, epochs=1, shuffle_buffer=4))
    c = rows_of(ItemStream([st], "train", seed=4, epochs=1, shuffle_buffer=4))
    assert a == b and a != c
    assert sorted(a) == sorted(c) == train_rows  # each epoch is a permutation of the split
    assert a != train_rows  # shuffled
    two = rows_of(ItemStream([st], "train", seed=3, epochs=2, shuffle_buffer=4))
    assert two[:32] == a and sorted(two[32:]) == train_rows and two[32:] != a  # a new order per epoch
    # resuming mid-stream skips exactly the consumed items
    full = [it.row for batch in ItemStream([st], "train", seed=3, epochs=1).batches(5) for it in batch]
    rest = [it.row for batch in ItemStream([st], "train", seed=3, epochs=1).batches(5, skip=10) for it in batch]
    assert rest == full[10:]
    # items carry their question/answer and the right activations
    item = next(iter(ItemStream([st], "train", seed=0, epochs=1)))
    ex = st.examples()[item.row]
    assert (item.question, item.answer, item.text) == ("What colour is it?", ex["label"], ex["text"])
    assert item.x.pooled.shape == (1, 32) and item.x.tokens is None and item.kind == "open"
    assert torch.equal(item.x.pooled[0], st.read_last(st.layers[0], item.row, item.row + 1)[0])
    text = next(iter(ItemStream([st], "val", mode="text", epochs=1)))
    assert text.answer == st.examples()[text.row]["text"] and split_of(text.row) == "val"


def test_stream_ranks_split_each_global_batch(stores):
    """Two ranks see, step by step, exactly the global batch one process sees, split between them."""
    st = Store(stores["a"])
    one = [[it.row for it in b] for b in ItemStream([st], "train", seed=1, epochs=1).batches(4)]
    r0, r1 = ([[it.row for it in b] for b in ItemStream([st], "train", seed=1, epochs=1, rank=r, world=2).batches(4)]
              for r in (0, 1))
    assert len(one) == len(r0) == len(r1) > 1
    for g, a, b in zip(one, r0, r1):
        assert a == g[0::2] and b == g[1::2] and not set(a) & set(b)
    assert sorted(sum(r0 + r1, [])) == sorted(int(r) for r in st.split_rows("train"))
    # two stores: items from both, tagged with their store
    both = list(ItemStream([st, Store(stores["seq"])], "test", epochs=1))
    assert {it.store for it in both} == {0, 1} and len(both) == 2 * 8


def test_length_grouped_batches_pad_less_and_resume_exactly(stores):
    """groups = G: each pool of G batches holds the same items as G plain batches, cut by length (the padding a
    batch pays falls), in a fixed order, and a resume after any whole batch continues exactly."""
    st = Store(stores["a"])
    length = lambda it: it.row % 5  # noqa: E731  (any key: the test store's items all have one length)
    plain = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(4)]
    grouped = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(4, groups=4,
                                                                                                 length=length)]
    assert len(grouped) == len(plain) == 16
    for p in range(0, 16, 4):  # pool by pool: the same items, each batch all one length bucket or sorted runs
        assert sorted(sum(grouped[p:p + 4], [])) == sorted(sum(plain[p:p + 4], []))
    spread = lambda bs: sum(max(r % 5 for r in b) * len(b) - sum(r % 5 for r in b) for b in bs)  # noqa: E731
    assert spread(grouped) < spread(plain) / 2  # padding the batches pay
    assert grouped != plain and sum(grouped, []) != sum(plain, [])
    again = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(4, groups=4,
                                                                                               length=length)]
    assert again == grouped  # deterministic
    for k in (1, 4, 6):  # resume after k whole batches: mid-pool and at a pool boundary
        rest = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(
            4, skip=4 * k, groups=4, length=length)]
        assert rest == grouped[k:]


def test_stream_buffer_is_bounded(stores, monkeypatch):
    """The producer reads a chunk only once the items in flight fit in shuffle_buffer (+ the queue)."""
    st = Store(stores["a"])
    buffer, prefetch = 3, 1
    log: list[tuple[int, int]] = []  # (rows read before this read, items yielded so far)
    read = {"rows": 0}
    orig = stream_mod.read_rows
    s = ItemStream([st], "train", seed=0, epochs=1, shuffle_buffer=buffer, prefetch=prefetch)

    def counting(store, rows, spec, **kw):
        log.append((read["rows"], s.seen))
        read["rows"] += len(rows)
        return orig(store, rows, spec, **kw)

    monkeypatch.setattr(stream_mod, "read_rows", counting)
    chunk = max(len(rows) for _, rows in s.chunks)
    assert len(s.chunks) >= 4 and chunk <= 8
    got = []
    for it in s:
        got.append(it.row)
    assert len(got) == 32 and read["rows"] == 32 and len(log) == len(s.chunks)
    for before, seen in log:
        # in the shuffle buffer ≤ buffer, in the queue ≤ prefetch, handed over but not yet yielded ≤ 1
        assert before - seen <= buffer + prefetch + 1, log
    # and the count is live: once the buffer has filled, exactly `buffer` items wait in it at each read
    assert max(before - seen for before, seen in log) >= buffer
