"""Token-level inputs: what the stream shows each item (pooled, one token, a window, the whole text), the
self-supervised context items, training and evaluating a run that reads token vectors, and the Verbalizer asked
about hidden states that no harvest produced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_run

from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.store import Store
from uav_eval.protocol import EvalConfig, evaluate
from uav_eval.verbalizer import Verbalizer
from uav_train.stream import CONTEXT, InputSpec, ItemStream, read_rows, stack_x
from uav_train.trainer import TrainConfig, train

WORDS = ["apple", "river", "castle", "piano", "garden", "rocket"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Each text names a thing in the middle of a sentence: the thing is the answer to 'Which thing is named?'."""
    p = tmp_path_factory.mktemp("data") / "things.jsonl"
    with p.open("w") as f:
        for i in range(48):
            w = WORDS[i % len(WORDS)]
            split = "train" if i % 6 < 4 else ("val" if i % 6 == 4 else "test")
            f.write(json.dumps({"id": f"t{i:02d}", "text": f"Number {i} says the {w} is here today.", "task": "fact",
                                "source": "things", "split": split,
                                "qa": [{"question": "Which thing is named?", "answer": w}]}) + "\n")
    return p


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_llama_dir, data) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for name, positions in (("all", "all"), ("win", "window:5")):
        harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(root / name), layers=[1, 2],
                              positions=positions, shard_rows=16, chunk_rows=8, progress=False))
        out[name] = str(root / name)
    return out


def spec(**kw) -> InputSpec:
    return InputSpec(**{"layers": ("model.layers.2",), "readout": "mean", "token_layers": ("model.layers.1",), **kw})


def test_forms_show_what_they_say(stores):
    st = Store(stores["all"])
    rows = st.split_rows("train")[:6]
    ras = read_rows(st, rows, spec(), spans=True)
    rng = np.random.default_rng(0)
    for r, ra in zip(rows, ras):
        n = len(st.token_ids(int(r)))
        assert ra.tokens.shape == (n, 1, 32) and list(ra.positions) == list(range(n)) and ra.spans.shape == (n, 2)
        assert torch.equal(ra.tokens[:, 0], st.read_tokens("model.layers.1", int(r)))
        assert torch.equal(ra.pooled[0], st.read("model.layers.2", int(r), int(r) + 1, "mean")[0])
        full, pooled, tokens = (ra.form(f) for f in ("full", "pooled", "tokens"))
        assert full.pooled is not None and full.tokens.shape[0] == n
        assert pooled.tokens is None and tokens.pooled is None
        for _ in range(5):
            w = ra.form("window", rng, (2, 4))
            assert w.pooled is None and 2 <= len(w.positions) <= 4
            assert torch.equal(w.tokens, ra.tokens[w.positions[0]:w.positions[-1] + 1])
            t = ra.form("token", rng)
            assert len(t.positions) == 1
    x = stack_x([type("I", (), {"x": a})() for a in (ras[0].form("full"), ras[1].form("token", rng))])
    assert x.pooled.shape == (2, 1, 32) and x.has_pooled.tolist() == [True, False]
    assert x.mask.sum(1).tolist() == [len(ras[0].positions), 1] and x.tokens.dtype == torch.float32


def test_context_items_ask_for_the_windows_own_text_or_its_neighbours(stores):
    """Self-supervised items: the answer is cut from the example's text by the stored character spans, so it is
    exactly the words of the window (or the words before / after it)."""
    st = Store(stores["all"])
    s = ItemStream([st], "train", mode="context", epochs=1, seed=1, spec=spec(window=(2, 3)))
    items = list(s)
    assert len(items) == len(st.split_rows("train")) and {it.task for it in items} == {"context"}
    kinds = {it.kind for it in items}
    assert kinds == {"context_own", "context_before", "context_after"}
    spans_of = {int(r): sp for r, sp in zip(range(st.n_rows), st.char_spans(0, st.n_rows))}
    for it in items:
        assert it.x.pooled is None and 2 <= len(it.x.positions) <= 3
        sp = spans_of[it.row][it.x.positions]
        inside = sp[sp[:, 0] >= 0]
        piece = it.text[inside[:, 0].min():inside[:, 1].max()]
        kind = it.kind.removeprefix("context_")
        assert it.question in CONTEXT[kind]
        if kind == "own":
            assert it.answer == piece
        elif kind == "before":
            assert it.text[:inside[:, 0].min()].split()[-12:] == it.answer.split()
        else:
            assert it.text[inside[:, 1].max():].split()[:12] == it.answer.split()
    # qa mode mixes them in: context = 0.5 → about half a context item per text
    mixed = list(ItemStream([st], "train", epochs=1, seed=2, spec=spec(), context=0.5))
    n_ctx = sum(it.task == "context" for it in mixed)
    assert sum(it.task == "fact" for it in mixed) == len(st.split_rows("train")) and 0 < n_ctx < len(st.split_rows("train"))
    with pytest.raises(UavError, match="windows of token vectors"):
        ItemStream([st], "train", spec=spec(token_layers=()), context=1.0)


def token_cfg(st, decoder, out, **kw) -> TrainConfig:
    base = dict(stores=[st["all"]], out=str(out), decoder=str(decoder), adapter="mlp",
                adapter_options={"k": 2, "hidden": 32, "skip": True}, layers=[2], readout="mean", token_layers=[1],
                token_adapter="pervector", token_adapter_options={"hidden": 32}, stage="2", steps=4, batch_size=4,
                eval_every=2, val_items=8, checkpoint_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


def test_a_token_run_trains_resumes_and_evaluates(stores, tiny_llama_dir, tmp_path, capsys):
    """pooled + tokens, warm start of both skip paths, self-supervised items in the mix: trains, resumes bit for bit
    after a kill, records what it reads, and evaluates every item with the read-out and every token."""
    cfg = token_cfg(stores, tiny_llama_dir, tmp_path / "run", warm_start=True, context=0.5,
                    forms={"full": 2, "window": 1, "pooled": 1}, progress=True)
    run = train(cfg)
    rec = json.loads((run / "config.json").read_text())
    summary = {k: v for s in rec["summary"] for k, v in s.items()}
    assert summary["warm_start_tokens"] > 50 and summary["warm_start_tokens_r2"] > 0.1
    said = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warm start"))
    assert (f"answer embeddings R² {summary['warm_start_r2']:.2f}" in said
            and f"token embeddings R² {summary['warm_start_tokens_r2']:.2f} ({summary['warm_start_tokens']:,} tokens)" in said)
    assert rec["adapter"]["pooled"]["config"]["kind"] == "mlp" and rec["adapter"]["tokens"]["config"]["kind"] == "pervector"
    assert rec["train"]["token_layers"] == ["model.layers.1"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    gaps = {k for r in rows for k in r if k.startswith("gap_")}
    assert {"gap_fact", "gap_context"} <= gaps  # the reading gap per task group, self-supervised items included
    # killed after step 2 and resumed: the same weights as the uninterrupted run
    killed = tmp_path / "killed"
    calls = {"n": 0}

    def die(stage, step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(token_cfg(stores, tiny_llama_dir, killed, warm_start=True, context=0.5,
                        forms={"full": 2, "window": 1, "pooled": 1}), on_step=die)
    train(token_cfg(stores, tiny_llama_dir, killed, warm_start=True, context=0.5, forms={"full": 2, "window": 1, "pooled": 1}))
    assert_same_run(run, killed)
    res = evaluate(EvalConfig(run=str(run), methods=["uav", "shuffled", "no_soft"], similarity=False, n_boot=20,
                              progress=False, probe=False))
    st = Store(stores["all"])
    assert res.n_items == len(st.split_rows("test")) and res.adapter == "mlp+pervector"
    assert "fact" in res.reading["by_task"]


def test_window_store_and_token_only_runs(stores, tiny_llama_dir, tmp_path):
    """A window:5 store trains a tokens-only run (no pooled branch); a pooled-only store is refused for it."""
    run = train(token_cfg(stores, tiny_llama_dir, tmp_path / "win", stores=[stores["win"]], adapter="none",
                          adapter_options={}, stage="both", stage1_task="context", stage1_steps=2, steps=2))
    rec = json.loads((run / "config.json").read_text())
    assert rec["adapter"]["pooled"] is None and rec["summary"][0]["stage"] == 1
    res = evaluate(EvalConfig(run=str(run), methods=["uav"], similarity=False, n_boot=10, progress=False, probe=False))
    assert res.n_items == len(Store(stores["win"]).split_rows("test"))
    for bad, match in (({"forms": {"pooled": 1}}, "a form needs the branch"), ({"window": [3, 2]}, "1 ≤ min ≤ max"),
                       ({"token_layers": None}, "nothing to read"),
                       ({"adapter": "mlp", "token_layers": None, "context": 1.0}, "windows of token vectors"),
                       ({"token_adapter": "mlp"}, "cannot read a variable number")):
        with pytest.raises(UavError, match=match):
            token_cfg(stores, tiny_llama_dir, tmp_path / "bad", **{"adapter": "none", "adapter_options": {}, **bad}).validate()


def test_verbalizer_reads_hidden_states_from_a_plain_transformers_forward(stores, tiny_llama_dir, tmp_path):
    """Activations captured with plain transformers (no harvest) give exactly the answers the harvested store's rows
    give, for the whole text and for one token; widths and layers are checked; controls and a score come back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train(token_cfg(stores, tiny_llama_dir, tmp_path / "run", steps=2))
    v = Verbalizer.load(run, device="cpu", references=4)
    st = Store(stores["all"])
    row = int(st.split_rows("test")[0])
    text = st.examples()[row]["text"]
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    got = {}
    hook = model.model.layers[2].register_forward_hook(lambda m, i, o: got.update(b2=(o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
    hook.remove()
    # hidden_states[i + 1] is block i's output, except the last entry, which is after the final norm: a hook gives that
    hidden = {1: out.hidden_states[2][0], "model.layers.2": got["b2"][0]}
    acts = v.acts(hidden)
    ra = read_rows(st, np.array([row]), v.spec)[0]
    assert torch.allclose(acts.tokens.float(), ra.tokens.float(), atol=2e-3)
    assert torch.allclose(acts.pooled.float(), ra.pooled.float(), atol=2e-3)
    ans = v.ask(hidden, ["Which thing is named?", "What is it?"], max_new_tokens=4)
    assert len(ans) == 2 and all(a.shuffled is not None and a.no_soft is not None and a.score is not None for a in ans)
    one = v.ask(hidden, "Which thing is named?", positions=3, max_new_tokens=4)[0]
    assert one.position == 3
    via_text = v.read(text, ["Which thing is named?"], controls=False, max_new_tokens=4)[0]
    assert via_text.answer == ans[0].answer
    with pytest.raises(UavError, match="wide"):
        v.ask({1: torch.zeros(5, 8), 2: torch.zeros(5, 8)}, "q")
    with pytest.raises(UavError, match="not one this run reads"):
        v.ask({7: torch.zeros(5, 32)}, "q")
    with pytest.raises(UavError, match="outside"):
        v.ask(hidden, "q", positions=99)
    with pytest.raises(UavError, match="empty"):
        v.ask(hidden, [""])


def test_every_token_option_is_a_train_flag(stores, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """`uav train` takes the token-level settings as flags (over a recipe's), and refuses a malformed one in a line."""
    from helpers import run_uav

    import uav_train.trainer as trainer
    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg: seen.append(cfg) or cfg.out)
    code, _, err = run_uav(["train", "--store", stores["all"], "--decoder", str(tiny_llama_dir), "--out",
                            str(tmp_path / "run"), "--token-layers", "1", "--token-adapter", "pervector",
                            "--lr-tokens", "1e-4", "--context", "0.5", "--window", "2,6", "--forms", "full=1,tokens=0.5",
                            "--warm-start", "--stage1-task", "context"], capsys)
    assert code == 0, err
    cfg = seen[0]
    assert (cfg.token_layers, cfg.lr_tokens, cfg.context, cfg.window) == ([1], 1e-4, 0.5, [2, 6])
    assert (cfg.forms, cfg.warm_start, cfg.stage1_task) == ({"full": 1.0, "tokens": 0.5}, True, "context")
    for flag, value, says in (("--window", "2,x", "--window takes two token counts"),
                              ("--window", "5", "--window takes two token counts"),
                              ("--forms", "full=lots", "is not FORM=WEIGHT")):
        code, _, err = run_uav(["train", "--store", stores["all"], "--decoder", str(tiny_llama_dir), "--out",
                                str(tmp_path / "bad"), "--token-layers", "1", flag, value], capsys)
        assert code == 2 and says in err and len(err.strip().splitlines()) <= 2, err


def test_overlap_weights_tokens_by_the_characters_they_share():
    from uav_train.distill import _overlap

    mine = np.array([[-1, -1], [0, 3], [3, 9]])  # a BOS, then two tokens
    theirs = np.array([[0, 2], [2, 5], [5, 9], [-1, -1]])
    np.testing.assert_array_equal(_overlap(mine, theirs), [[0, 0, 0, 0], [2, 1, 0, 0], [0, 2, 4, 0]])


def test_distill_fits_a_transfer_adapter_to_the_frozen_runs_soft_tokens(stores, tiny_llama_dir, tiny_gemma_dir, data,
                                                                        tmp_path):
    """Adapter-only transfer to another donor: ``distill`` fits the new adapter to the soft tokens the frozen run's
    adapter emits for the same texts, before the first decoder step; the val cosine it reports is the one the stage
    starts from, and is higher than without it. Each target is the frozen adapter's output for the tokens that share
    the characters (the same tokenizer here: exactly that token's)."""
    from uav_train.distill import _cosine, teacher_pairs
    from uav_train.run import RunRecord, load_adapter

    gemma = tmp_path / "gemma"
    harvest(HarvestConfig(donor=str(tiny_gemma_dir), data=str(data), out=str(gemma), layers=[1, 2], positions="all",
                          shard_rows=16, chunk_rows=8, progress=False))
    run_a = train(token_cfg(stores, tiny_llama_dir, tmp_path / "a", warm_start=True, steps=6))
    teacher, _ = load_adapter(run_a)
    a_spec = RunRecord.load(run_a / "config.json").input_spec()
    own = teacher_pairs([Store(stores["all"])], a_spec, teacher, [Store(stores["all"])], a_spec, "val")
    with torch.no_grad():  # a store paired with itself: every target is the teacher's output for that very input
        assert _cosine(teacher, own)["tokens"] > 0.9999 and _cosine(teacher, own)["pooled"] > 0.9999

    starts = {}
    orig = __import__("uav_train.trainer", fromlist=["Trainer"]).Trainer._stage

    def spy(self, stage, steps):
        starts[self.cfg.out] = {k: v.detach().clone() for k, v in self.adapter.state_dict().items()}
        return orig(self, stage, steps)

    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("uav_train.trainer.Trainer._stage", spy)
        for name, n in (("plain", 0), ("distilled", 60)):
            runs[name] = train(token_cfg(stores, tiny_llama_dir, tmp_path / name, stores=[str(gemma)], warm_start=True,
                                         frozen_decoder=str(run_a), distill=n, steps=2))
    rec = json.loads((runs["distilled"] / "config.json").read_text())
    got = next(s for s in rec["summary"] if "distill_steps" in s)
    b_spec = RunRecord.load(runs["distilled"] / "config.json").input_spec()
    val = teacher_pairs([Store(str(gemma))], b_spec, teacher, [Store(stores["all"])], a_spec, "val")
    assert val.n[0] == len(Store(str(gemma)).split_rows("val")) and val.n[1] > 3 * val.n[0]  # every text, its tokens
    cos = {}
    for name, run in runs.items():
        student, _ = load_adapter(run)
        student.load_state_dict(starts[str(run)])
        with torch.no_grad():
            cos[name] = {k: float(v) for k, v in _cosine(student, val).items()}
    for branch in ("pooled", "tokens"):
        assert cos["distilled"][branch] == pytest.approx(got[f"distill_val_cos_{branch}"], abs=1e-3)
        assert cos["distilled"][branch] > cos["plain"][branch] + 0.1
        assert got[f"distill_val_cos_{branch}"] > got[f"distill_val_cos_{branch}_before"]
    with pytest.raises(UavError, match="no frozen_decoder"):
        token_cfg(stores, tiny_llama_dir, tmp_path / "x", distill=5).validate()
    with pytest.raises(UavError, match="this run has stage both"):
        token_cfg(stores, tiny_llama_dir, tmp_path / "x", distill=5, frozen_decoder=str(run_a), stage="both").validate()
    with pytest.raises(UavError, match="emits 3 soft tokens"):
        train(token_cfg(stores, tiny_llama_dir, tmp_path / "k", stores=[str(gemma)], frozen_decoder=str(run_a),
                        distill=5, adapter_options={"k": 3, "hidden": 32, "skip": True}))
