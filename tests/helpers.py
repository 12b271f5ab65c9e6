"""Assertions shared by test modules (conftest holds fixtures; this holds plain functions)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs between {a} and {b}"


def assert_same_run(ref: Path, run: Path) -> None:
    """A resumed run ends exactly like the uninterrupted one: adapters, LoRA, and every log line."""
    assert json.loads((run / "config.json").read_text())["status"] == "complete"
    for f in ("adapter.safetensors", "stage1/adapter.safetensors", "lora/adapter_model.safetensors"):
        assert_same_tensors(ref / f, run / f)

    def rows(p: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "items_per_s"}
                for x in (p / "metrics.jsonl").read_text().splitlines() if x.strip()]

    assert rows(run) == rows(ref)  # no duplicated or missing log lines either
