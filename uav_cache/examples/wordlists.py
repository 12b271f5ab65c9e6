"""Labeled items from word lists and tables in PyPI packages, turned into examples: word sentiment (VADER), noun
number and verb tense (lemminflect), written language (Faker), car origin (vega_datasets), unit quantity (Pint),
holiday month (holidays), element family (periodictable) and US state capitals (us). Whole datasets of them can be
held out of training (recipes.py: the oracle recipe).

Each item is one short text with one honest label; where a text is built from a frame sentence, the frame is chosen by
a hash of the item so the build stays deterministic. Each source returns every example it can make, sorted by id.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
import warnings

from uav_cache.examples.schema import sha256_text
from uav_cache.examples.texts import bbc_files, country_names, example, read_text
from uav_cache.files import package_dir


def _pick(options: tuple[str, ...] | list[str], key: str) -> str:
    return options[int(sha256_text(key)[:8], 16) % len(options)]


@functools.lru_cache(maxsize=1)
def _bbc_word_counts() -> dict[str, int]:
    """Lower-cased word counts over the whole BBC corpus: a commonness filter for the word-list sources, so
    their words are ones a small donor saw often (lemminflect alone lists ~40k lemmas, many obscure)."""
    counts: dict[str, int] = {}
    for path in bbc_files():
        for w in re.findall(r"[a-z]+", read_text(path).lower()):
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
        out.append(example("word_sentiment", word, _pick(frames, word).format(w=word), "classification",
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
        out.append(example("noun_number", singular, _pick(frames, singular).format(n=noun), "classification",
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
        out.append(example("verb_tense", base, text, "classification",
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
            out.append(example("language_id", f"{loc}/{i}", text[0].upper() + text[1:] + ".", "classification",
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
        out.append(example("car_origin", re.sub(r"[^a-z0-9]+", "-", name), _pick(frames, name).format(c=name),
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
        out.append(example("unit_dimension", name, _pick(frames, name).format(u=spoken), "classification",
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

    names = country_names()
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
        out.append(example("holiday_month", f"{code}/{sha256_text(name)[:10]}",
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
        out.append(example("element_family", el.symbol, f"{name} is a chemical element.", "classification",
                       [("Which family of elements does this element belong to?", family)], label=family,
                       facts={"family": family}))
    return out


def src_us_state() -> list[dict]:
    """The 50 US states and their capitals from the us package (BSD-3). The capital is not in the text: like
    country_fact_knowledge, it must come from the donor's own knowledge."""
    import us

    return [example("us_state", s.abbr, f"{s.name} is one of the fifty US states.", "fact",
                [("What is the capital of this state?", s.capital)], facts={"capital": s.capital})
            for s in sorted(us.states.STATES, key=lambda s: s.abbr)]
