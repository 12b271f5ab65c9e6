"""examples/hooks.py, end to end: activations from plain transformers forward hooks (no harvest) asked about with the
Verbalizer, on a tiny donor and a tiny trained run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uav_eval.verbalizer import Verbalizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Number 7 says the river is here today."


def test_the_hooks_example_answers_as_a_read_of_the_same_text(tiny_runs, tiny_llama_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "hooks.py"), str(tiny_runs["tokens"]), "--donor",
                          str(tiny_llama_dir), "--text", TEXT, "--question", "Which thing is named?"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ref = Verbalizer.load(tiny_runs["tokens"], device="cpu").read(TEXT, "Which thing is named?")[0]
    lines = out.stdout.splitlines()
    assert lines[0] == "Q: Which thing is named?" and lines[1] == f"A: {ref.answer}"
    assert f"shuffled: {ref.shuffled} | no activation: {ref.no_soft} | score: " in lines[2]
    assert float(lines[2].rsplit("score: ", 1)[1]) == pytest.approx(ref.score, abs=2e-3)


def test_the_zeroshot_yesno_example_scores_every_yes_no_question_by_group(tmp_path, tiny_llama_dir):
    """examples/zeroshot_yesno.py: every yes/no question of the split is scored once, grouped into seen and held-out
    datasets; open questions and other splits are left out; AUC is 1 / 0 / 0.5 for perfect / reversed / no order."""
    import json

    sys.path.insert(0, str(ROOT / "examples"))
    from zeroshot_yesno import auc

    assert auc([(2.0, True), (1.0, False)]) == 1 and auc([(1.0, True), (2.0, False)]) == 0
    assert auc([(1.0, True), (1.0, False)]) == 0.5
    data = tmp_path / "oracle.jsonl"
    with data.open("w") as f:
        for i in range(6):
            held = i % 2 == 0
            qa = [{"question": "What colour is it?", "answer": "red"},
                  {"question": "Is it red? Answer yes or no.", "answer": "yes", "kind": "yesno"},
                  {"question": "Is it blue? Answer yes or no.", "answer": "no", "kind": "yesno"}]
            f.write(json.dumps({"id": f"x{i}", "text": f"The cat {i} is red.", "source": "held" if held else "seen",
                                "split": "val" if i < 5 else "test", "qa": qa,
                                **({"heldout_dataset": True} if held else {})}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "zeroshot_yesno.py"), str(tiny_llama_dir), "--data",
                          str(data), "--split", "val"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    n = {ln.split("  ")[0].strip(): int(ln.split(" n ")[1].split()[0]) for ln in out.stdout.splitlines()}
    assert n == {"held-out dataset": 6, "seen dataset": 4, "held": 6, "seen": 4}  # 3 + 2 val texts, 2 yes/no each
    assert "AUC" in next(ln for ln in out.stdout.splitlines() if ln.startswith("held-out dataset"))


def test_the_unseen_headlines_example_holds_no_text_of_the_demo_data(tmp_path):
    """examples/unseen_headlines.py: headline articles none of the demo's splits holds, the same ones for a seed,
    loadable as `uav eval --data`."""
    import json

    from uav_cache.examples import load_examples, recipes

    sys.path.insert(0, str(ROOT / "examples"))
    from unseen_headlines import unseen

    demo = recipes.build("demo").examples
    out = unseen(30, seed=1)
    assert len(out) == 30 and out == unseen(30, seed=1) and out != unseen(30, seed=2)
    assert not {e["id"] for e in out} & {e["id"] for e in demo}
    assert not {e["text"] for e in out} & {e["text"] for e in demo}
    assert {(e["source"], e["split"], e["qa"][0]["question"]) for e in out} == \
        {("bbc_headline", "test", "Write a headline for this text.")}
    path = tmp_path / "headlines.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in out))
    assert [e["id"] for e in load_examples(str(path)).examples] == [e["id"] for e in out]
