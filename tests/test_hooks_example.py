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
