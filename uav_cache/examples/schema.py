"""The example record every stage shares, and a versioned set of them.

Every example is a plain dict (one JSON object per line on disk)::

    {"id", "text", "task": classification|fact|gist|any other name, "source", "split": train|val|test,
     "qa": [{"question", "answer"}, ...], "label" (classification only)}

The built-in sets use the three task groups of TASKS; user data may name any task (it is reported as its own
group, see uav_eval.protocol.TASK_TOKENS for the answer length it gets). An example's split follows from its
id (:func:`hash_split`) unless it names one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uav_cache.errors import UavError
from uav_cache.files import write_text_atomic

BUILDER_VERSION = "1"
TASKS = ("classification", "fact", "gist")  # the built-in groups and the report's order; not a closed list
SPLITS = ("train", "val", "test")


def fingerprint(examples: list[dict]) -> str:
    """sha256 of the canonical JSON of all examples in order: the dataset's version identity."""
    blob = json.dumps(examples, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class ExampleSet:
    """A named, fingerprinted list of examples; ``meta`` carries provenance (recipe, seed, path)."""

    name: str
    examples: list[dict]
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)

    def split_sizes(self) -> dict[str, int]:
        sizes = {s: 0 for s in SPLITS}
        for ex in self.examples:
            sizes[ex["split"]] = sizes.get(ex["split"], 0) + 1
        return sizes

    def source_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ex in self.examples:
            counts[ex["source"]] = counts.get(ex["source"], 0) + 1
        return counts

    def save(self, out_dir: Path) -> Path:
        """Write examples.jsonl + manifest.json; each file is replaced atomically so a reader never sees half."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in self.examples)
        manifest = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "n_examples": len(self.examples),
            "split_sizes": self.split_sizes(),
            "source_counts": self.source_counts(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "builder_version": BUILDER_VERSION,
            **{k: v for k, v in self.meta.items() if k not in ("name", "fingerprint")},
        }
        write_text_atomic(out_dir / "examples.jsonl", lines)
        write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return out_dir


def sha256_text(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def hash_split(example_id: str) -> str:
    """80/10/10 train/val/test from sha256(id): stable across runs, machines and dataset sizes."""
    bucket = int(sha256_text(example_id)[:8], 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def check_example(ex: Any, where: str = "example") -> dict:
    """Raise UavError unless ``ex`` matches the schema; ``where`` ("file.jsonl line 7") goes in the message."""
    fix = 'each line needs {"id": str, "text": str, "task", "source", "split", "qa": [{"question", "answer"}]}'
    if not isinstance(ex, dict):
        raise UavError(f"{where}: expected a JSON object, got {type(ex).__name__}", fix)
    ex_id = ex.get("id")
    if not isinstance(ex_id, str) or not ex_id:
        raise UavError(f"{where}: 'id' must be a non-empty string, got {ex_id!r}",
                       'give "id" a unique string or number, or leave it out (user files then use the line number)')
    text = ex.get("text")
    if not isinstance(text, str) or not text.strip():
        raise UavError(f"{where} (id {ex_id!r}): 'text' is missing, not a string, or empty",
                       'give "text" the text the donor reads, a non-empty string')
    task = ex.get("task")
    if not isinstance(task, str) or not task.strip() or task == "overall":  # "overall" is the report's pooled group
        raise UavError(f"{where} (id {ex_id!r}): 'task' must be a non-empty name other than 'overall' (e.g. "
                       f"{', '.join(TASKS)}, or your own), got {task!r}",
                       'set "task" to a name, or leave it out (user files: classification with a label, else gist)')
    if ex.get("split") not in SPLITS:
        raise UavError(f"{where} (id {ex_id!r}): 'split' must be one of {', '.join(SPLITS)}, got {ex.get('split')!r}",
                       f'set "split" to one of {", ".join(SPLITS)}, or leave it out (a hash of the id decides)')
    if not isinstance(ex.get("source"), str) or not ex["source"]:
        raise UavError(f"{where} (id {ex_id!r}): 'source' must be a non-empty string, got {ex.get('source')!r}",
                       'set "source" to a name, or leave it out (user files use the file name)')
    qa = ex.get("qa")
    if not isinstance(qa, list) or not all(
        isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str) for p in qa
    ):
        raise UavError(f"{where} (id {ex_id!r}): 'qa' must be a list of {{\"question\": str, \"answer\": str}}",
                       'write "qa": [{"question": "…", "answer": "…"}, …], or leave it out (no questions)')
    empty = next((i for i, p in enumerate(qa) if not p["question"].strip() or not p["answer"].strip()), None)
    if empty is not None:  # an empty answer trains the decoder to stop at once and scores 0 whatever it says
        raise UavError(f"{where} (id {ex_id!r}): qa item {empty} has an empty question or answer",
                       "give every qa item a question and an answer, or drop the item")
    if ex["task"] == "classification" and not (isinstance(ex.get("label"), str) and ex["label"]):
        raise UavError(f"{where} (id {ex_id!r}): classification examples need a string 'label' (got "
                       f"{ex.get('label')!r})", 'add "label": "<its class>" (the answer accuracy is scored against), '
                       'or give the example another task, e.g. "task": "fact"')
    return ex


def normalise(raw: Any, where: str, default_id: str, default_source: str) -> dict:
    """Fill the optional fields of a user record (id, split, qa, task, source), then validate."""
    if not isinstance(raw, dict):
        raise UavError(f"{where}: expected a JSON object, got {type(raw).__name__}", "write one {...} object per line")
    ex = dict(raw)
    if ex.get("id") is None:
        ex["id"] = default_id
    elif isinstance(ex["id"], (int, float)) and not isinstance(ex["id"], bool):
        ex["id"] = str(ex["id"])
    ex.setdefault("qa", [])
    ex.setdefault("source", default_source)
    ex.setdefault("task", "classification" if "label" in ex else "gist")
    if isinstance(ex["id"], str) and ex["id"]:
        ex.setdefault("split", hash_split(ex["id"]))
    return check_example(ex, where)
