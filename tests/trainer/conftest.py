"""The trainer tests' tiny data, stores (two donor families, pooled and per-token) and first run; module-scoped, so
each test module builds its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_kit import LABELS, cfg_for, harvest_store, split_of, train_spy


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "colours.jsonl"
    nouns = ["cat", "dog", "car", "hat"]
    with p.open("w") as f:
        for i in range(48):
            lab = LABELS[i % 3]
            f.write(json.dumps({"id": f"ex{i:02d}", "text": f"The {nouns[i % 4]} is {lab}, number {i}.",
                                "label": lab, "task": "classification", "source": "toy", "split": split_of(i),
                                "qa": [{"question": "What colour is it?", "answer": lab}]}) + "\n")
    return p

@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_llama_dir, tiny_gemma_dir, data) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stores")
    return {
        "a": harvest_store(tiny_llama_dir, data, root / "llama"),
        "b": harvest_store(tiny_gemma_dir, data, root / "gemma"),  # donor B
        "seq": harvest_store(tiny_llama_dir, data, root / "llama_seq", layers=[1, 2], positions="all"),
    }

@pytest.fixture(scope="module")
def run_a(tmp_path_factory, stores, tiny_llama_dir):
    out = tmp_path_factory.mktemp("runs") / "a"
    seen = train_spy(cfg_for(stores, tiny_llama_dir, out))
    return out, seen
