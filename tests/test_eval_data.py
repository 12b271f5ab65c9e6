"""`uav eval --data`: a data file is checked before any donor work, harvested once, and never mistaken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import COLOURS, NOUNS
from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_eval.protocol import EvalConfig, evaluate
from uav_train.run import load_run
from test_eval import data, run  # noqa: F401  (module fixtures reused here)


def test_a_data_file_without_questions_is_refused_before_any_donor_work(run, tmp_path, monkeypatch):
    monkeypatch.setattr("uav_cache.harvest.harvest", lambda cfg: pytest.fail("the donor was run"))
    notes = tmp_path / "notes.txt"
    notes.write_text("The cat is red.\n\nThe dog is blue.\n")
    quick = dict(run=str(run), methods=["uav"], similarity=False, progress=False)
    with pytest.raises(UavError, match=r"notes.txt has no questions to evaluate \(a .txt file holds texts only\)"):
        evaluate(EvalConfig(**quick, data=str(notes)))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"id": f"p{i}", "text": f"The cat is {c}.", "split": "test"}) + "\n"
                             for i, c in enumerate(COLOURS)))
    with pytest.raises(UavError, match="plain.jsonl has no questions to evaluate .no example carries qa pairs"):
        evaluate(EvalConfig(**quick, data=str(plain)))
    with pytest.raises(UavError, match=r"plain.jsonl has no 'val' examples \(its splits: test\)"):
        evaluate(EvalConfig(**quick, data=str(plain), split="val"))
    assert not (run / "evals").exists() or not list((run / "evals").glob("notes-*")) + list((run / "evals").glob("plain-*"))


def test_data_that_is_the_runs_own_training_file_is_its_own_test_split_not_a_new_harvest(run, data, tmp_path,
                                                                                        monkeypatch, capsys):
    import shutil

    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    monkeypatch.setattr("uav_cache.harvest.harvest", lambda cfg: pytest.fail("the run's own data was harvested again"))
    quick = dict(run=str(run_copy), methods=["uav"], similarity=False, n_boot=10, progress=False, probe=False)
    evals = set(run_copy.glob("evals/*"))  # what other evaluations of the module's run left there
    res = evaluate(EvalConfig(**quick, data=str(data)))
    err = capsys.readouterr().err
    assert f"uav: note: {data} is the data the run was trained on" in err and "evaluating its test split" in err
    assert res.split == "test" and res.own_dataset and res.folder() == run_copy
    assert set(run_copy.glob("evals/*")) == evals  # nothing harvested, nothing written beside the run
    plain = evaluate(EvalConfig(**quick))  # the same evaluation as without --data
    assert [r["pred"] for r in res.items] == [r["pred"] for r in plain.items] and res.n_items == plain.n_items == 20


def test_a_damaged_read_out_the_run_does_not_read_is_warned_about(run, tmp_path, capsys):
    import shutil

    rec = load_run(run).info.record
    src = Path(rec.stores[0].location())
    store = tmp_path / "store"
    shutil.copytree(src, store)
    other = next(r for r in Store(store).readouts if r != rec.readout)
    chunk = store / "acts" / "model.layers.1" / other / "c" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[:32] = bytes(32)
    chunk.write_bytes(bytes(raw))
    res = evaluate(EvalConfig(run=str(run), store=str(store), methods=["uav"], similarity=False, n_boot=10,
                              progress=False, probe=False))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("uav: warning")]
    assert res.n_items == 20 and len(err) == 1, err
    assert err[0].startswith(f"uav: warning: store {store} is damaged where this run does not read: ")
    assert f"model.layers.1/{other}" in err[0] and f"uav store verify {store}" in err[0]


def test_an_interrupted_data_harvest_says_the_same_command_resumes_it(run, data, tmp_path, monkeypatch, capsys):
    import shutil

    from helpers import run_uav

    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text(data.read_text().replace("number", "item"))
    argv = ["eval", str(run_copy), "--data", str(fresh), "--controls", "none", "--no-similarity", "--device", "cpu"]
    import uav_cache.harvest as h

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(h, "forward_shard", interrupted)
    code, _, err = run_uav(argv, capsys)
    from uav_cache.examples import load_examples
    from uav_eval.protocol import data_store

    store = data_store(run_copy, load_examples(str(fresh)))
    assert store.is_dir() and not Store(store).meta["complete"]
    assert code == 130 and err.strip().splitlines()[-1] == \
        f"uav: interrupted (the harvest of {fresh} into {store} is kept: the same command resumes it)", err
    monkeypatch.undo()
    code, out, err = run_uav(argv, capsys)
    assert code == 0 and "report → " in out, err
    assert Store(store).meta["complete"]


def test_a_data_file_keeps_token_vectors_of_the_layers_the_run_reads_them_from_only(tiny_runs, tmp_path):
    """A run reading block 2's read-out and block 1's token vectors: --data stores both blocks' read-outs and block 1's
    token vectors, not block 2's (a store of every block's tokens is many times larger, for nothing)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["tokens"], run)
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text("".join(json.dumps({"id": f"f{i}", "text": f"The {n} sits here.", "split": "test",
                                         "qa": [{"question": "Which thing is named?", "answer": n}]}) + "\n"
                             for i, n in enumerate(NOUNS)))
    res = evaluate(EvalConfig(run=str(run), data=str(fresh), methods=["uav"], similarity=False, n_boot=10,
                              progress=False, probe=False))
    st = Store(res.store)
    assert res.n_items == 4 and sorted(st.layers) == ["model.layers.1", "model.layers.2"]
    assert st.token_layers == ["model.layers.1"] and st.token_width is None
