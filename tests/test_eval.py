"""Evaluation end to end on tiny models: every method and control, batched generation, result files and scoring."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from helpers import COLOURS, NOUNS, write_toy_data
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.store import Store
from uav_eval.controls import METHODS, MethodRunner, check_methods, selfie_applicable
from uav_eval.generate import generate
from uav_eval.protocol import EvalConfig, eval_items, evaluate
from uav_eval.results import Results, json_safe
from uav_train.run import load_run
from uav_train.stream import derangement, stack_x
from uav_train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("data") / "toy.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, data) -> Path:
    """A two-stage run whose donor and decoder are the same tiny model (so selfie applies)."""
    root = tmp_path_factory.mktemp("eval")
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(root / "store"), layers=[1],
                          shard_rows=16, chunk_rows=8, progress=False))
    return train(TrainConfig(stores=[str(root / "store")], out=str(root / "run"), decoder=str(tiny_llama_dir),
                             adapter="mlp", adapter_options={"k": 2, "hidden": 32}, stage1_steps=2, steps=3,
                             batch_size=4, eval_every=3, val_items=4, progress=False))



@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, tiny_llama_dir, data) -> Path:
    """A run trained from folder a/ on the store typed as the relative path "store"; folder b/ holds another
    dataset under the same relative name."""
    import os

    root = tmp_path_factory.mktemp("relative")
    other = root / "other.jsonl"
    other.write_text("".join(data.read_text().splitlines(keepends=True)[:45]))
    for folder, d in (("a", data), ("b", other)):
        harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(d), out=str(root / folder / "store"), layers=[1],
                              shard_rows=16, chunk_rows=8, progress=False))
    cwd = os.getcwd()
    os.chdir(root / "a")
    try:
        train(TrainConfig(stores=["store"], out="run", decoder=str(tiny_llama_dir), adapter="mlp",
                          adapter_options={"k": 2, "hidden": 32}, stage1_steps=1, steps=1, batch_size=4, eval_every=1,
                          val_items=4, progress=False))
    finally:
        os.chdir(cwd)
    return root


def test_eval_scores_the_runs_own_dataset_from_any_folder(relative_run, monkeypatch, capsys):
    """The run records its store's absolute path and dataset fingerprint: from folder b/, the "store" there (other
    data) is not silently evaluated; an explicit --store of other data is allowed, with a note; a run whose own
    store was re-harvested with other data is refused."""
    run, a, b = relative_run / "a" / "run", relative_run / "a" / "store", relative_run / "b" / "store"
    monkeypatch.chdir(relative_run / "b")
    quick = dict(run=str(run), limit=1, methods=["uav"], similarity=False, n_boot=10, progress=False)
    res = evaluate(EvalConfig(**quick))
    assert Path(res.store) == a.resolve() and res.dataset_fingerprint == Store(a).meta["dataset_fingerprint"]
    assert "note" not in capsys.readouterr().err
    res = evaluate(EvalConfig(**quick, store="store"))
    assert res.dataset_fingerprint == Store(b).meta["dataset_fingerprint"]
    err = capsys.readouterr().err
    assert "uav: note: evaluating on store" in err and "not the run's training dataset" in err
    assert res.folder() == run / "evals" / f"{res.dataset}-{res.dataset_fingerprint[:12]}"
    import shutil
    shutil.rmtree(a)
    shutil.copytree(b, a)
    with pytest.raises(UavError, match="now holds dataset .* not the .* the run was trained on"):
        evaluate(EvalConfig(**quick))


def test_other_data_and_splits_never_overwrite_the_runs_own_results(run, data, tiny_llama_dir, tmp_path):
    """The run folder's results.json / report.md are only ever its own test split with the standard settings: another
    store's dataset lands in evals/<dataset>-<fingerprint>/, the val split in its own folder, other settings under
    their own names; each is listed by `evaluations`."""
    import shutil

    from uav_eval.results import evaluations

    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    with pytest.raises(UavError, match="'vall' is not a split"):  # refused before anything loads or is written
        evaluate(EvalConfig(run=str(run_copy), split="vall", progress=False))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(data.read_text().splitlines(keepends=True)[:30]))
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(other), out=str(tmp_path / "other"), layers=[1],
                          shard_rows=16, chunk_rows=8, progress=False))
    quick = dict(run=str(run_copy), methods=["uav"], similarity=False, n_boot=10, progress=False, probe=False)
    own = evaluate(EvalConfig(**quick))
    before = {p: p.read_bytes() for p in (own.file(), own.file("report", "md"), run_copy / "README.md")}
    other = evaluate(EvalConfig(**quick, store=str(tmp_path / "other")))
    val = evaluate(EvalConfig(**quick, split="val"))
    assert {p: p.read_bytes() for p in before} == before
    assert own.folder() == run_copy and own.own_dataset
    assert other.folder() == run_copy / "evals" / f"other-{other.dataset_fingerprint[:12]}" and not other.own_dataset
    assert val.folder() == run_copy / "evals" / f"toy-{val.dataset_fingerprint[:12]}-val" and val.own_dataset
    assert "(not the data the run was trained on)" in other.file("report", "md").read_text()
    for res in (other, val):
        assert json.loads(res.file().read_text())["dataset_fingerprint"] == res.dataset_fingerprint
    assert evaluations(run_copy) == [own.file(), *sorted([other.file(), val.file()])]


def test_evaluations_that_differ_in_anything_that_changes_a_result_keep_their_own_files(run, data, tiny_llama_dir,
                                                                                       tmp_path):
    """Dataset, split, limit, controls, the store's reading of the texts and the decoding settings each change the
    numbers: two evaluations that differ in any of them both stay on disk, each file holding its own (a store's test
    split beside the same data's every split, harvested from --data, was one file)."""
    import shutil
    from dataclasses import asdict

    from uav_eval.results import evaluations

    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    fresh = tmp_path / "fresh.jsonl"  # new to the run: its test split and every split are two evaluations
    fresh.write_text(data.read_text().replace("number", "item"))
    for out, cap in (("fresh", None), ("fresh-short", 6)):
        harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(fresh), out=str(tmp_path / out), layers=[1],
                              shard_rows=16, chunk_rows=8, max_length=cap, progress=False))
    quick = dict(run=str(run_copy), methods=["uav"], similarity=False, n_boot=10, progress=False, probe=False)
    store = str(tmp_path / "fresh")
    configs = [EvalConfig(**quick, store=store),  # its test split
               EvalConfig(**quick, data=str(fresh)),  # every split, harvested with the run's own settings
               EvalConfig(**quick, store=store, split="val"),
               EvalConfig(**quick, store=store, limit=2),
               EvalConfig(**quick, store=str(tmp_path / "fresh-short")),  # the same texts read up to 6 tokens
               EvalConfig(**{**quick, "methods": ["uav", "no_soft"]}, store=store),
               EvalConfig(**quick, store=store, max_new_tokens={"classification": 2, "fact": 3}),
               EvalConfig(**quick, store=store, seed=3)]
    results = [evaluate(cfg) for cfg in configs]
    on_disk = {f: Results.load(f) for f in evaluations(run_copy)}
    assert len(on_disk) == len(configs)
    for cfg, res in zip(configs, results):
        mine = [f for f, r in on_disk.items() if r.config == asdict(cfg)]
        assert len(mine) == 1, cfg  # each evaluation has one file, and nothing overwrote it
        assert on_disk[mine[0]].items == json_safe(res.items) and mine[0] == res.file()
        assert res.file("report", "md").read_text().count(f"`{res.file().name}`") == 1  # the report names its files
    assert results[1].split == "all" and results[1].folder().name.endswith("-all")
    assert results[4].settings["store_reading"] == {"dtype": "fp16", "max_length": 6, "donor_input": "raw"}
    assert results[5].settings == {"methods": ["no_soft", "uav"], "similarity": False, "probe": False, "n_boot": 10}


def test_eval_on_any_data_file_harvests_it_with_the_runs_settings_once(run, tmp_path):
    """`uav eval RUN --data FILE.jsonl`: the file is harvested with the run's donor and store settings into the
    run's evals/ folder (every split evaluated: the data is new to the run), and reused by the next evaluation; a run
    that reads no token vectors gets none stored."""
    new = tmp_path / "fresh.jsonl"
    new.write_text("".join(json.dumps({"id": f"f{i}", "text": f"The {n} is {c}.", "task": "classification",
                                       "source": "fresh", "label": c, "qa": [{"question": "What colour is it?",
                                                                              "answer": c}]}) + "\n"
                           for i, (n, c) in enumerate(zip(NOUNS * 3, COLOURS * 4))))
    quick = dict(run=str(run), data=str(new), methods=["uav", "shuffled"], similarity=False, n_boot=10,
                 progress=False, probe=False)
    res = evaluate(EvalConfig(**quick))
    folder = res.folder()
    assert folder.parent == run / "evals" and folder.name == f"fresh-{res.dataset_fingerprint[:12]}-all"
    assert not res.own_dataset and res.split == "all" and res.n_items == 12 and res.file().exists()
    store = folder.with_name(f"fresh-{res.dataset_fingerprint[:12]}") / "store"  # one per dataset, whatever the split
    st = Store(store)
    rec = json.loads((run / "config.json").read_text())["stores"][0]
    for k in ("donor", "layers", "dtype", "max_length", "donor_input", "positions", "weights_fingerprint"):
        assert st.meta[k] == rec[k], k
    assert st.token_width == 0
    stamp = (store / "zarr.json").stat().st_mtime_ns
    again = evaluate(EvalConfig(**quick))
    assert (store / "zarr.json").stat().st_mtime_ns == stamp and again.file() == res.file()
    test = evaluate(EvalConfig(**quick, split="test"))  # the same harvest, its test split beside every split
    assert (store / "zarr.json").stat().st_mtime_ns == stamp and test.folder() == store.parent
    assert test.n_items < res.n_items and res.file().exists()
    with pytest.raises(UavError, match="--store and --data"):
        evaluate(EvalConfig(**quick, store=str(store)))


def test_evaluate_runs_every_method_on_the_test_split(run):
    res = evaluate(EvalConfig(run=str(run), limit=3, similarity=False, n_boot=50, progress=False))
    assert res.methods == list(METHODS)  # selfie included: donor and decoder are the same weights
    store = Store(res.store)
    test_rows = set(store.split_rows("test").tolist())
    per_method = {m: [r for r in res.items if r["method"] == m] for m in METHODS}
    for m, rows in per_method.items():
        assert len(rows) == res.n_items == 9, m  # 3 sources × limit 3
        assert {r["row"] for r in rows} <= test_rows
        assert {r["source"] for r in rows} == {"colour", "mood", "noun"}
        for r in rows:
            assert 0.0 <= r["f1"] <= 1.0 and r["mention"] in (0.0, 1.0) and r["em"] in (0.0, 1.0)
            assert ("acc" in r) == (r["task"] == "classification")
    # methods that see no activation answer the same question the same way, whatever the item
    for m in ("no_soft", "base_only"):
        by_q: dict[str, set[str]] = {}
        for r in per_method[m]:
            by_q.setdefault(r["question"], set()).add(r["raw"])
        assert all(len(answers) == 1 for answers in by_q.values()), (m, by_q)
    agg = res.aggregates["by_source"]
    assert all(agg[f"uav/{s}"]["f1"]["n"] == 3 for s in ("colour", "mood", "noun"))
    assert agg["uav/overall"]["f1"]["n"] == 9
    assert res.settings == {"similarity": False, "n_boot": 50}  # every control: the rest is standard
    for kind, ext in (("results", "json"), ("report", "md"), ("eval_tasks", "png")):
        assert res.file(kind, ext) == run / f"{kind}-limit3-{res.tag}.{ext}" and res.file(kind, ext).stat().st_size > 0
    md = res.file("report", "md").read_text()
    assert f"(eval_tasks-limit3-{res.tag}.png)" in md and "settings: similarity False, n_boot 50" in md
    assert "answer mentioned" in md and "selfie" in md


def test_a_merged_lora_answers_as_peft_does_and_cannot_be_bypassed(run):
    """Evaluations without a base-model control fold the LoRA into the weights (faster generation): the logits are
    peft's, and bypassing a folded LoRA is refused rather than silently answering with it."""
    peft_lr, merged_lr = load_run(run), load_run(run, merge=True)
    assert peft_lr.has_lora and not peft_lr.merged and merged_lr.merged
    assert not any("lora_" in n for n, _ in merged_lr.model.named_modules())
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        merged = merged_lr.model(input_ids=ids).logits
        torch.testing.assert_close(merged, peft_lr.model(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
        with MethodRunner(peft_lr).lora(False):
            assert not torch.equal(peft_lr.model(input_ids=ids).logits, merged)  # the LoRA changed something
    with pytest.raises(UavError, match="merged into the decoder"):
        with MethodRunner(merged_lr).lora(False):
            pass


def test_a_limited_evaluation_never_replaces_the_full_one(run):
    """`uav eval RUN --limit 1` is a quick check: it goes to results-limit1[-<settings>].json / report-limit1….md."""
    quick = dict(run=str(run), methods=["uav"], similarity=False, n_boot=10, progress=False)
    full = evaluate(EvalConfig(**quick))
    before = {p: p.read_bytes() for p in (full.file(), full.file("report", "md"), full.file("eval_tasks", "png"))}
    assert json.loads(before[full.file()])["n_items"] == full.n_items == 20
    limited = evaluate(EvalConfig(**quick, limit=1))
    assert limited.n_items == 3 and limited.file() == run / f"results-limit1-{full.tag}.json"
    assert {p: p.read_bytes() for p in before} == before
    assert json.loads(limited.file().read_text())["n_items"] == 3
    for bad, problem in (({"limit": 0}, "--limit must be ≥ 1, got 0"),
                         ({"batch_size": 0}, "--batch-size must be ≥ 1")):
        with pytest.raises(UavError, match=problem):
            evaluate(EvalConfig(**{**quick, **bad}))


def test_a_limit_counts_texts_and_scores_every_question_of_each(run, tiny_llama_dir, tmp_path):
    """--limit N takes the first N texts of each source with all their questions. Counting questions instead scored
    facts on 4 of 12 country texts at limit 20 (about six questions each)."""
    p = tmp_path / "multi.jsonl"
    with p.open("w") as f:
        for i in range(10):
            noun, colour = NOUNS[i % 4], COLOURS[i % 3]
            qa = [{"question": "Which thing?", "answer": noun}, {"question": "What colour?", "answer": colour},
                  {"question": "Which number?", "answer": str(i)}] if i % 2 else \
                [{"question": "What colour is it?", "answer": colour}]
            f.write(json.dumps({"id": f"t{i}", "text": f"The {noun} is {colour}, number {i}.", "split": "test",
                                "task": "fact" if i % 2 else "classification", "label": None if i % 2 else colour,
                                "source": "facts" if i % 2 else "topic", "qa": qa}) + "\n")
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(p), out=str(tmp_path / "store"), layers=[1],
                          progress=False))
    store, spec = Store(str(tmp_path / "store")), load_run(run).info.record.input_spec()
    items = eval_items(store, "test", 2, spec)
    assert [(it.source, it.text.split(",")[1]) for it in items] == \
        [("topic", " number 0."), ("facts", " number 1."), ("facts", " number 1."), ("facts", " number 1."),
         ("topic", " number 2."), ("facts", " number 3."), ("facts", " number 3."), ("facts", " number 3.")]
    assert [it.answer for it in items if it.source == "facts"] == ["dog", "green", "1", "hat", "red", "3"]
    assert len(eval_items(store, "test", None, spec)) == 5 * 3 + 5


def test_batched_generation_matches_one_at_a_time(run):
    """Left padding, the splice and the selfie patch must not depend on who else is in the batch."""
    lr = load_run(run)
    items = eval_items(Store(lr.info.record.stores[0].path), "test", None, lr.info.record.input_spec())
    items = [it for src in ("noun", "colour", "mood") for it in [i for i in items if i.source == src][:2]]
    assert len({len(lr.tok(it.question).input_ids) for it in items}) > 1  # rows of different lengths get padded
    runner, stop = MethodRunner(lr), lr.template.stop_ids()

    def answers(method, batch):
        s = runner.setup(method, batch, stack_x(batch))
        with runner.lora(s.lora):
            return generate(lr.model, lr.tok, s.prompts, s.soft, stop_ids=stop, patch=s.patch, max_new_tokens=6,
                            soft_mask=s.soft_mask)

    for method in ("uav", "no_soft", "input_text", "selfie"):
        assert answers(method, items) == [a for it in items for a in answers(method, [it])], method


def test_an_answers_generated_logprob_is_its_teacher_forced_one(run):
    """The calibration's own half is read off the decoding steps' logits: it must equal a teacher-forced pass over
    the same tokens, stop token included, with left padding in the batch and right padding in the pass."""
    from uav_eval.generate import generate_scored
    from uav_eval.verbalizer import logprobs

    lr = load_run(run)
    items = eval_items(Store(lr.info.record.stores[0].path), "test", None, lr.info.record.input_spec())[:6]
    s = MethodRunner(lr).setup("uav", items, stack_x(items))
    first = generate_scored(lr.model, lr.tok, s.prompts, s.soft, stop_ids=lr.template.stop_ids(), max_new_tokens=5,
                            soft_mask=s.soft_mask)
    stop = lr.template.stop_ids() + [first.ids[0][1]]  # the first answer's 2nd token also ends an answer: some stop
    g = generate_scored(lr.model, lr.tok, s.prompts, s.soft, stop_ids=stop, max_new_tokens=5, soft_mask=s.soft_mask)
    assert g.texts == generate(lr.model, lr.tok, s.prompts, s.soft, stop_ids=stop, max_new_tokens=5,
                               soft_mask=s.soft_mask)
    end = first.ids[0].index(stop[-1]) + 1
    assert g.ids[0] == first.ids[0][:end] and end < 5 and max(len(i) for i in g.ids) <= 5
    forced = logprobs(lr, [it.x for it in items], [it.question for it in items], g.ids)
    assert g.logprob == pytest.approx(forced, abs=1e-4)
    other = logprobs(lr, [items[o].x for o in derangement(items)], [it.question for it in items], g.ids)
    assert g.logprob != pytest.approx(other, abs=1e-4)  # another activation makes the same answer less or more likely


def test_shuffled_is_uav_shown_another_items_activation(run):
    """The control the whole method rests on: the same trained adapter, LoRA and prompt, only the activation swapped.
    (Not the random adapter on the swapped activation: a weaker control.)"""
    from uav_eval.protocol import run_methods

    lr = load_run(run)
    items = eval_items(Store(lr.info.record.stores[0].path), "test", None, lr.info.record.input_spec())
    other = derangement(items)
    runner = MethodRunner(lr)
    swapped = stack_x([items[o] for o in other])
    shuffled, own = runner.setup("shuffled", items, swapped), runner.setup("uav", [items[o] for o in other], swapped)
    torch.testing.assert_close(shuffled.soft, own.soft)  # the trained adapter's soft tokens of the other items
    assert not torch.allclose(runner.setup("random_adapter", items, swapped).soft, own.soft)
    preds = run_methods(lr, items, ["uav", "shuffled"], EvalConfig(run=str(run), progress=False))
    assert preds["shuffled"] == [preds["uav"][o] for o in other]  # every question here is the same per source


def test_question_only_methods_answer_each_distinct_question_once(run, monkeypatch):
    """no_soft and base_only see the question alone: one generation per distinct question, the same answers as asking
    every item (the demo's 190 test items ask 13 questions)."""
    from uav_eval import protocol

    lr = load_run(run, merge=False)  # base_only bypasses the LoRA
    items = eval_items(Store(lr.info.record.stores[0].path), "test", None, lr.info.record.input_spec())
    items[0].question = "Which word is it, really?"  # one item asks its own question
    cfg = EvalConfig(run=str(run), progress=False)
    full = {}
    for m in protocol.QUESTION_ONLY:  # every item asked, one batch each
        runner = MethodRunner(lr)
        for i, it in enumerate(items):
            s = runner.setup(m, [it], stack_x([it]))
            with runner.lora(s.lora):
                full[m, i] = generate(lr.model, lr.tok, s.prompts, None, stop_ids=lr.template.stop_ids(),
                                      max_new_tokens=cfg.max_new_tokens.get(it.task, protocol.DEFAULT_TASK_TOKENS))[0]
    asked, real = [], protocol.generate

    def spy(model, tok, prompts, soft, **kw):
        asked.extend(tuple(p) for p, _ in prompts)
        return real(model, tok, prompts, soft, **kw)

    monkeypatch.setattr(protocol, "generate", spy)
    preds = protocol.run_methods(lr, items, list(protocol.QUESTION_ONLY), cfg)
    distinct = {(it.task, it.question) for it in items}
    assert len(distinct) < len(items) and len(asked) == len(distinct) * len(protocol.QUESTION_ONLY)
    for m in protocol.QUESTION_ONLY:
        assert preds[m] == [full[m, i] for i in range(len(items))], m


def test_own_task_names_get_the_default_answer_length(run, monkeypatch):
    """A task outside the built-in groups is generated with DEFAULT_TASK_TOKENS and scored as its own group."""
    from uav_eval import protocol

    lr = load_run(run)
    items = eval_items(Store(lr.info.record.stores[0].path), "test", 2, lr.info.record.input_spec())
    for it in items[:3]:
        it.task = "fact_retrieval"
    calls = []

    def spy(model, tok, prompts, soft, *, max_new_tokens, **kw):
        calls.append(max_new_tokens)
        return ["red"] * len(prompts)

    monkeypatch.setattr(protocol, "generate", spy)
    cfg = EvalConfig(run=str(run), methods=["uav"], progress=False)
    preds = protocol.run_methods(lr, items, ["uav"], cfg)
    assert set(calls) == {protocol.DEFAULT_TASK_TOKENS} | {protocol.TASK_TOKENS[it.task] for it in items[3:]}
    rows = protocol.score(items, preds, protocol.label_sets(Store(lr.info.record.stores[0].path)), False)
    agg = protocol.metrics.aggregate(rows, protocol.metrics.METRIC_KEYS, ["method", "task"], n_boot=10)
    assert agg["uav/fact_retrieval"]["f1"]["n"] == 3


def test_explain_finds_a_local_donor_from_any_folder_or_by_donor(run, tmp_path, monkeypatch, tiny_llama_dir,
                                                                tiny_gemma_dir):
    """A store harvested from a local folder used to record only the folder's basename: `uav explain` worked only
    from its parent. Stores now record the path; for older runs (or a moved folder) --donor says where it is."""
    import shutil
    from uav_eval.verbalizer import explain

    monkeypatch.chdir(tmp_path)
    answers = explain(str(run), "The cat is red.", ["What colour is it?"], max_new_tokens=3, device="cpu")
    assert [q for q, _ in answers] == ["What colour is it?"]
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["stores"][0].pop("donor_path")  # as runs on older stores recorded it: the basename only
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UavError, match="cannot find the run's donor") as e:
        explain(str(old), "The cat is red.", ["What colour?"], device="cpu")
    assert "--donor" in e.value.fix
    assert explain(str(old), "The cat is red.", ["What colour is it?"], max_new_tokens=3, device="cpu",
                   donor=str(tiny_llama_dir)) == answers
    with pytest.raises(UavError, match="other weights"):
        explain(str(old), "The cat is red.", ["What colour?"], device="cpu", donor=str(tiny_gemma_dir))


def test_selfie_needs_the_same_weights(run):
    lr = load_run(run)
    assert selfie_applicable(lr) and "selfie" in check_methods(["uav", "selfie"], lr)
    lr.info.record = copy.deepcopy(lr.info.record)
    lr.info.record.stores[0].weights_fingerprint = "another donor"
    assert not selfie_applicable(lr) and check_methods(["uav", "selfie"], lr) == ["uav"]
    with pytest.raises(UavError, match="unknown control"):
        check_methods(["uav", "selfy"], lr)

def test_generalization_rows_yes_no_scoring_and_calibration(tiny_llama_dir, tmp_path):
    """Yes/no questions are their own group, scored by the leading yes/no with the share of clean answers; items are
    placed as seen dataset + seen phrasing, seen dataset + held-out phrasing (never trained: the stream skips it),
    or a dataset the run never trained on; every uav answer gets a score, and the report bins correctness by it."""
    from uav_eval.metrics import score_item
    from uav_eval.protocol import GENERALIZATION
    from uav_train.stream import ItemStream

    assert score_item("Yes, it is red.", "yes")["acc"] == 1.0 and score_item("Yes, it is red.", "yes")["clean"] == 1.0
    assert score_item("It might be.", "no") == {**score_item("It might be.", "no"), "acc": 0.0, "clean": 0.0}
    assert "clean" not in score_item("red", "red", label_set={"red", "blue"})
    p = tmp_path / "yn.jsonl"
    with p.open("w") as f:
        for i in range(48):
            colour, src = COLOURS[i % 3], ("paint", "ink")[i % 2]
            split = "test" if i % 3 == 2 else ("val" if i % 5 == 0 else "train")
            qa = [{"question": "Is it red? Answer yes or no.", "answer": "yes" if colour == "red" else "no",
                   "kind": "yesno", "phrasing": "seen"},
                  {"question": "Would you call it red? Reply yes or no.", "answer": "yes" if colour == "red" else "no",
                   "kind": "yesno", "phrasing": "heldout"},
                  {"question": "What colour is it?", "answer": colour}]
            extra = {"heldout_dataset": True} if i % 8 == 7 else {}  # its recipe held it out: never trained
            src = "dye" if extra else src
            f.write(json.dumps({"id": f"y{i:02d}", "text": f"The {src} is {colour}.", "task": "classification",
                                "label": colour, "source": src, "split": split, "qa": qa, **extra}) + "\n")
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(p), out=str(tmp_path / "store"), layers=[1],
                          shard_rows=16, chunk_rows=8, progress=False))
    st = Store(tmp_path / "store")
    trained = list(ItemStream([st], "train", epochs=1))
    assert {it.question for it in trained} == {"Is it red? Answer yes or no.", "What colour is it?"}  # held out: never
    assert {it.task for it in trained} == {"yesno", "classification"} and "dye" not in {it.source for it in trained}
    assert "dye" not in {it.source for it in ItemStream([st], "train", mode="text", epochs=1)}
    # the yes/no weight (a curriculum's labels-first run: 0): the open questions stay as they are
    kinds = {w: [it.kind for it in ItemStream([st], "train", epochs=1, yesno=w)] for w in (0.0, 1.0, 2.0)}
    assert kinds[0.0].count("yesno") == 0 and kinds[2.0].count("yesno") == 2 * kinds[1.0].count("yesno") > 0
    assert kinds[0.0].count("open") == kinds[1.0].count("open") == kinds[2.0].count("open") > 0
    # the closed-form start maps a read-out to its answer's words: never to "yes" or "no" (they follow from the question)
    from uav_train.trainer import Trainer
    ws = Trainer(TrainConfig(stores=[str(tmp_path / "store")], out=str(tmp_path / "ws"), decoder=str(tiny_llama_dir),
                             adapter="mlp", adapter_options={"k": 2, "hidden": 32, "skip": True}, stage="2",
                             warm_start=True, progress=False)).warm_start()
    assert ws["warm_start_items"] == kinds[1.0].count("open")
    run = train(TrainConfig(stores=[str(tmp_path / "store")], out=str(tmp_path / "run"), decoder=str(tiny_llama_dir),
                            adapter="mlp", adapter_options={"k": 2, "hidden": 32}, stage="2", steps=2, batch_size=4,
                            eval_every=2, val_items=4, sources=["paint", "dye"], progress=False))
    res = evaluate(EvalConfig(run=str(run), methods=["uav", "shuffled", "no_soft"], similarity=False, n_boot=20,
                              progress=False, probe=False))
    gen = res.reading["by_generalization"]
    assert set(gen) == {f"{t} · {g}" for t in ("yesno", "classification") for g in GENERALIZATION[:3]} - \
        {f"classification · {GENERALIZATION[1]}"}  # the open question has no held-out phrasing
    n = {k: v["n"] for k, v in gen.items()}
    assert n[f"yesno · {GENERALIZATION[1]}"] == n[f"yesno · {GENERALIZATION[0]}"] > 0
    uav = [r for r in res.items if r["method"] == "uav"]
    assert all(isinstance(r["score"], float) for r in uav)
    assert {r["generalization"] for r in uav if r["source"] in ("ink", "dye")} == {GENERALIZATION[2]}
    assert any(r["source"] == "dye" for r in uav)
    assert res.calibration["yesno"]["metric"] == "acc" and len(res.calibration["yesno"]["bins"]) == 3
    assert sum(b["n"] for b in res.calibration["yesno"]["bins"]) == res.calibration["yesno"]["n"]
    md = res.file("report", "md").read_text()
    assert "## Questions it was never trained on" in md and "dataset never trained" in md
    # a run trained with yesno = 0 (a curriculum's labels-first run) saw no yes/no question of any dataset
    from uav_eval.protocol import eval_items, generalization
    from uav_train.stream import InputSpec
    items = eval_items(st, "test", None, InputSpec(layers=tuple(st.layers)))
    assert {generalization(it, {"paint"}, yesno_trained=False) for it in items if it.kind == "yesno"} == \
        {GENERALIZATION[3]}
    assert {generalization(it, {"paint"}, yesno_trained=False) for it in items if it.kind == "open"} == \
        {generalization(it, {"paint"}) for it in items if it.kind == "open"} == {GENERALIZATION[0], GENERALIZATION[2]}
    assert "## Is a confident answer a right one?" in md


def test_a_source_that_mixes_tasks_is_scored_and_reported_per_task(tmp_path):
    """A source with labels and facts: each item is scored by its own task's metric (accuracy for a label, token F1
    for a fact), and the per-source tables list the source once per task."""
    from uav_eval import metrics
    from uav_eval.protocol import reading, score
    from uav_eval.report import write_report
    from uav_eval.results import Results
    from uav_train.stream import Item

    items = [Item(None, "What colour is it?", COLOURS[i % 3], i, 0, "classification", "mix", f"It is {COLOURS[i % 3]}.")
             for i in range(6)] + \
            [Item(None, "Which thing is it?", NOUNS[i % 4], 10 + i, 0, "fact", "mix", f"A {NOUNS[i % 4]}.")
             for i in range(6)] + [Item(None, "Which thing is it?", "cat", 20, 0, "fact", "plain", "A cat.")]
    preds = {"uav": [it.answer for it in items], "shuffled": ["red"] * 6 + ["the dog"] * 7}
    rows = score(items, preds, {"mix": set(COLOURS)}, similarity=False)
    rd = reading(rows, n_boot=50)
    assert {r["source_task"] for r in rows} == {"mix · classification", "mix · fact", "plain"}
    assert set(rd["by_source"]) == {"mix · classification", "mix · fact", "plain"}
    cls, fact = rd["by_source"]["mix · classification"], rd["by_source"]["mix · fact"]
    assert (cls["metric"], cls["n"], cls["uav"], cls["shuffled"]) == ("acc", 6, 1.0, pytest.approx(2 / 6))
    assert (fact["metric"], fact["n"], fact["uav"]) == ("f1", 6, 1.0) and fact["shuffled"] == pytest.approx(2 / 6)  # "the dog" is "dog", twice
    agg = {by: metrics.aggregate(rows, metrics.METRIC_KEYS, ["method", key], n_boot=20)
           for by, key in (("by_task", "task"), ("by_source", "source_task"))}
    res = Results(run=str(tmp_path), split="test", methods=["uav", "shuffled"], n_items=len(items), aggregates=agg,
                  reading=rd, items=rows, probe={"mix": {"run": None, "best": {"test_acc": 0.9, "test_lo": 0.8,
                                                                                "test_hi": 1.0}}})
    write_report(res, tmp_path)
    md = (tmp_path / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| ↳ mix · classification |"))
    assert "| acc | 6 | 1.00 | 0.33 |" in line and "0.90 [0.80, 1.00]" in line  # the source's probe, for its labels
    assert next(ln for ln in md.splitlines() if ln.startswith("| mix · fact | fact |"))
