"""The example record every stage shares, and a versioned set of them.

Every example is a plain dict (one JSON object per line on disk)::

    {"id", "text", "task": classification|fact|gist|any other name, "source", "split": train|val|test,
     "qa": [{"question", "answer"}, ...], "label" (classification only), "heldout_dataset" (optional)}

The built-in sets use the three task groups of TASKS; user data may name any task (it is reported as its own
group, see uav_eval.protocol.TASK_TOKENS for the answer length it gets). An example's split follows from its
id (:func:`hash_split`) unless it names one.

A qa pair may carry three optional keys, so that training and evaluation can tell question kinds and phrasings
apart (see uav_cache.examples.questions, which writes them):

- ``kind``: ``"open"`` (a free answer: "What is the topic?") or ``"yesno"`` (the answer is ``"yes"`` or
  ``"no"``).
- ``template``: the id of the template that phrased the question, ``FAMILY/INDEX`` (``"topic_yesno/3"``).
- ``phrasing``: ``"seen"`` or ``"heldout"``. A held-out phrasing is never trained on: training skips it, and
  evaluation reports it as "seen dataset, new phrasing".

Data without these keys stays valid and reads as kind "open", phrasing "seen" (:func:`qa_kind`,
:func:`qa_phrasing`), except that a pair whose answer is yes or no (any case, trailing period allowed) reads as
kind "yesno": in a user JSONL a yes/no item is simply ``{"question": "Is this about sport?", "answer": "no"}``.

``heldout_dataset: true`` on an example marks its whole source as a dataset never trained: no training stage
(question answering or context prediction) may read it; evaluation reports it as "dataset never trained".

``shown_from: N`` (a character offset) splits an example into what the donor reads and what the run is shown: the
donor reads the whole text, the run only the positions from character N on (their token vectors, computed in
context, and a read-out pooled over them). Whatever the run names there that the later words do not say was carried
forward by the donor: a privileged-information evaluation. A user file may give ``"context"`` instead, the part read
before ``text`` (``{"context": "We stayed in Peru.", "text": "People talk about it a lot."}``); it is stored as one
text with its ``shown_from``. Each val/test example with a ``shown_from`` gets a second row (:func:`with_alone_rows`):
the text from ``shown_from`` on, read by the donor alone (``alone_of``: the example's id). It is the evaluation's
without-context control, and no training stage reads it.
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
KINDS = ("open", "yesno")  # qa["kind"]
PHRASINGS = ("seen", "heldout")  # qa["phrasing"]


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

    def qa_counts(self) -> dict[str, dict[str, int]]:
        """Per source: open and yes/no questions, yes and no answers, and held-out phrasings among them."""
        counts: dict[str, dict[str, int]] = {}
        for ex in self.examples:
            c = counts.setdefault(ex["source"], {"open": 0, "yesno": 0, "yes": 0, "no": 0, "heldout_phrasing": 0})
            for p in ex["qa"]:
                kind = qa_kind(p)
                c[kind] = c.get(kind, 0) + 1
                if kind == "yesno":
                    c[yes_no(p["answer"]) or "no"] += 1
                    c["heldout_phrasing"] += qa_phrasing(p) == "heldout"
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
            "qa_counts": self.qa_counts(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "builder_version": BUILDER_VERSION,
            **{k: v for k, v in self.meta.items() if k not in ("name", "fingerprint")},
        }
        write_text_atomic(out_dir / "examples.jsonl", lines)
        write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return out_dir


ALONE = "#alone"  # suffix of the id of an example's without-context row


def with_alone_rows(examples: list[dict]) -> list[dict]:
    """``examples`` with, after each val/test example that has a ``shown_from``, its without-context row: the text
    from that offset on, read alone (``alone_of``), with the same questions. Train examples get none (nothing trains
    on them). Rows already present (a saved build) are kept, not doubled."""
    have = {e["id"] for e in examples}
    out = []
    for e in examples:
        out.append(e)
        twin = e["id"] + ALONE
        if e.get("shown_from") and e["split"] != "train" and twin not in have:
            row = {k: v for k, v in e.items() if k not in ("shown_from", "id", "text")}
            out.append({"id": twin, "text": e["text"][e["shown_from"]:].strip(), **row, "alone_of": e["id"]})
    return out


def sha256_text(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def hash_split(example_id: str) -> str:
    """80/10/10 train/val/test from sha256(id): stable across runs, machines and dataset sizes."""
    bucket = int(sha256_text(example_id)[:8], 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def yes_no(answer: str) -> str | None:
    """"yes" or "no" if ``answer`` is one (any case, surrounding space and a trailing period allowed), else None."""
    a = answer.strip().lower().rstrip(".").strip()
    return a if a in ("yes", "no") else None


def qa_kind(pair: dict) -> str:
    """A qa pair's kind: its own ``kind`` key, else "yesno" when the answer is yes or no, else "open"."""
    return pair.get("kind") or ("yesno" if yes_no(pair["answer"]) else "open")


def qa_phrasing(pair: dict) -> str:
    """A qa pair's phrasing: "heldout" (never trained on) or "seen" (the default)."""
    return pair.get("phrasing") or "seen"


def _check_qa(qa: Any, where: str) -> None:
    if not isinstance(qa, list) or not all(
        isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str) for p in qa
    ):
        raise UavError(f"{where}: 'qa' must be a list of {{\"question\": str, \"answer\": str}}",
                       'write "qa": [{"question": "…", "answer": "…"}, …], or leave it out (no questions)')
    for i, p in enumerate(qa):
        at = f"{where}: qa[{i}]"
        if not p["question"].strip() or not p["answer"].strip():  # an empty answer trains the decoder to stop at once
            raise UavError(f"{where}: qa item {i} has an empty question or answer",
                           "give every qa item a question and an answer, or drop the item")
        if "kind" in p and p["kind"] not in KINDS:
            raise UavError(f"{at} 'kind' must be one of {', '.join(KINDS)}, got {p['kind']!r}", "drop it or fix it")
        if p.get("kind") == "yesno" and yes_no(p["answer"]) is None:
            raise UavError(f"{at} is kind 'yesno' but its answer is {p['answer']!r}", 'answer "yes" or "no"')
        if "template" in p and not (isinstance(p["template"], str) and p["template"].strip()):
            raise UavError(f"{at} 'template' must be a non-empty string, got {p['template']!r}",
                           'name the template, e.g. "topic_yesno/3", or drop the key')
        if "phrasing" in p and p["phrasing"] not in PHRASINGS:
            raise UavError(f"{at} 'phrasing' must be one of {', '.join(PHRASINGS)}, got {p['phrasing']!r}",
                           'use "heldout" for a phrasing never trained on, or drop the key')


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
    _check_qa(ex.get("qa"), f"{where} (id {ex_id!r})")
    if "heldout_dataset" in ex and not isinstance(ex["heldout_dataset"], bool):
        raise UavError(f"{where} (id {ex_id!r}): 'heldout_dataset' must be true or false", "drop it or write true")
    if "shown_from" in ex:
        n = ex["shown_from"]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < len(text) or not text[n:].strip():
            raise UavError(f"{where} (id {ex_id!r}): 'shown_from' must be a character offset inside the text with "
                           f"words after it (1 … {len(text) - 1}), got {n!r}",
                           "give the offset where the run's view starts, or drop it (the run is shown every position)")
    if "alone_of" in ex and not (isinstance(ex["alone_of"], str) and ex["alone_of"]):
        raise UavError(f"{where} (id {ex_id!r}): 'alone_of' must be the id of the example it is the later part of",
                       "drop it: uav adds these rows itself")
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
    if "context" in ex:  # the part the donor reads first: one text, and the run's view starts after it
        context, text = ex.pop("context"), ex.get("text")
        if not (isinstance(context, str) and context.strip() and isinstance(text, str) and text.strip()):
            raise UavError(f"{where}: 'context' and 'text' must both be non-empty strings",
                           'write {"context": "what the donor reads first", "text": "the part the run is shown"}')
        joined = context if context[-1].isspace() else context + " "
        ex["text"], ex["shown_from"] = joined + text, len(joined)
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
