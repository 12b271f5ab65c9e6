"""Yes/no questions over labeled examples: many phrasings per question family, some never trained.

Why: a decoder trained on four fixed questions learns the answer format, not the question (held-out yes/no
questions score at chance). Activation Oracles (arXiv 2512.15674) generalize to held-out datasets by
training on yes/no classification over many datasets with paraphrased questions and balanced answers.

For every labeled fact of an example (a :class:`Relation`: "this article's topic is sport") the generator asks
about the true value (answer "yes") and about one false value drawn from the same relation's other values
(answer "no"), so answers are balanced per source and per relation by construction. Each question is phrased by
one of the family's templates (≥ 10 each, written for this project); a fixed, seeded subset of each family
(:data:`HELDOUT_PER_FAMILY` of them, :func:`heldout_templates`) is marked ``phrasing = "heldout"`` and is only
asked on val and test examples: training never sees it, evaluation reports it as "seen dataset, new phrasing".
Every choice (template, false value) is seeded by the example id, so a build is deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from uav_cache.errors import UavError

HELDOUT_PER_FAMILY = 3  # templates of each family that are never trained on
HELDOUT_SEED = "uav-heldout-templates-v1"  # fixed: changing it changes which phrasings are held out

# Slots: {noun} names the thing the text is ("article", "country", "word"); {label} is the value asked about.
# Templates avoid "a {label}" / "a {noun}" so no article is ever wrong ("a entertainment", "a April").
FAMILIES: dict[str, tuple[str, ...]] = {
    "topic_yesno": (
        "Is this {noun} about {label}? Answer yes or no.",
        "Does this {noun} concern {label}? Reply yes or no.",
        "Would you file this {noun} under {label}? Yes or no?",
        "Is {label} the subject of this {noun}? Answer with yes or no.",
        "Does this {noun} deal mainly with {label}? Say yes or no.",
        "Is the main theme of this {noun} {label}? Answer yes or no.",
        "Yes or no: does this {noun} belong in the {label} section?",
        "Does the {noun} cover {label}? Please answer yes or no.",
        "Would a reader say this {noun} is about {label}? Answer yes or no.",
        "Is this {noun} on the topic of {label}? Respond with yes or no.",
        "Does this {noun} report on {label}? Just say yes or no.",
        "Is {label} what this {noun} is about? Give a yes or no answer.",
    ),
    "sentiment_yesno": (
        "Is the sentiment of this {noun} {label}? Answer yes or no.",
        "Does this {noun} sound {label}? Reply yes or no.",
        "Is this {noun} {label} in tone? Yes or no?",
        "Would you call the feeling in this {noun} {label}? Answer with yes or no.",
        "Does this {noun} express {label} feelings? Say yes or no.",
        "Is the mood of this {noun} {label}? Answer yes or no.",
        "Yes or no: is this {noun} {label}?",
        "Is the emotional tone of this {noun} {label}? Please answer yes or no.",
        "Would a reader find this {noun} {label}? Answer yes or no.",
        "Is {label} the right label for the sentiment here? Respond with yes or no.",
        "Does this {noun} carry {label} sentiment? Just say yes or no.",
        "Is the attitude behind this {noun} {label}? Give a yes or no answer.",
    ),
    "place_yesno": (
        "Is this {noun} in {label}? Answer yes or no.",
        "Is this {noun} located in {label}? Reply yes or no.",
        "Yes or no: is this {noun} found in {label}?",
        "Does this {noun} lie in {label}? Answer with yes or no.",
        "Would you find this {noun} on a map of {label}? Say yes or no.",
        "Is {label} where this {noun} is? Answer yes or no.",
        "Does this {noun} belong to {label}? Yes or no?",
        "Is this {noun} part of {label}? Please answer yes or no.",
        "If you travelled to this {noun}, would you be in {label}? Answer yes or no.",
        "Is this {noun} situated in {label}? Respond with yes or no.",
        "Can this {noun} be found in {label}? Just say yes or no.",
        "Is {label} the home of this {noun}? Give a yes or no answer.",
    ),
    "capital_yesno": (
        "Is the capital of this {noun} {label}? Answer yes or no.",
        "Is {label} the capital of this {noun}? Reply yes or no.",
        "Yes or no: is this {noun}'s capital {label}?",
        "Does this {noun} have {label} as its capital? Answer with yes or no.",
        "Is {label} where the government of this {noun} sits? Say yes or no.",
        "Would {label} be the right answer for the capital of this {noun}? Answer yes or no.",
        "Is the capital city here {label}? Yes or no?",
        "Does the capital of this {noun} go by the name {label}? Please answer yes or no.",
        "Is {label} the seat of government of this {noun}? Answer yes or no.",
        "Is this {noun} governed from {label}? Respond with yes or no.",
        "Is {label} this {noun}'s capital city? Just say yes or no.",
        "Does this {noun} have its capital in {label}? Give a yes or no answer.",
    ),
    "currency_yesno": (
        "Is the {label} the currency of this {noun}? Answer yes or no.",
        "Do people in this {noun} pay in {label}? Reply yes or no.",
        "Yes or no: is this {noun}'s money the {label}?",
        "Does this {noun} use the {label} as its currency? Answer with yes or no.",
        "Would you need {label} to buy things in this {noun}? Say yes or no.",
        "Is {label} the money used in this {noun}? Answer yes or no.",
        "Are prices in this {noun} given in {label}? Yes or no?",
        "Is the official currency here the {label}? Please answer yes or no.",
        "Does this {noun} trade in {label}? Answer yes or no.",
        "Is the {label} legal tender in this {noun}? Respond with yes or no.",
        "Do shops in this {noun} take {label}? Just say yes or no.",
        "Is this {noun}'s currency called the {label}? Give a yes or no answer.",
    ),
    "language_yesno": (
        "Is {label} the main language of this {noun}? Answer yes or no.",
        "Do most people in this {noun} speak {label}? Reply yes or no.",
        "Yes or no: is {label} spoken in this {noun}?",
        "Is the main language here {label}? Answer with yes or no.",
        "Would you hear {label} on the streets of this {noun}? Say yes or no.",
        "Is {label} the language people use in this {noun}? Answer yes or no.",
        "Does this {noun} mainly speak {label}? Yes or no?",
        "Is {label} the chief language of this {noun}? Please answer yes or no.",
        "Would a visitor to this {noun} need {label}? Answer yes or no.",
        "Is {label} the first language of this {noun}? Respond with yes or no.",
        "Do people in this {noun} talk in {label}? Just say yes or no.",
        "Is this {noun} {label}-speaking? Give a yes or no answer.",
    ),
    "written_language_yesno": (
        "Is this {noun} written in {label}? Answer yes or no.",
        "Is the language of this {noun} {label}? Reply yes or no.",
        "Yes or no: is this {noun} in {label}?",
        "Are these words {label}? Answer with yes or no.",
        "Does this {noun} use the {label} language? Say yes or no.",
        "Is {label} the language of these words? Answer yes or no.",
        "Was this {noun} written by someone using {label}? Yes or no?",
        "Are these words taken from {label}? Please answer yes or no.",
        "Would a {label} speaker recognise these words as their own? Answer yes or no.",
        "Does this {noun} belong to the {label} language? Respond with yes or no.",
        "Is this {noun} {label}? Just say yes or no.",
        "Are the words here in {label}? Give a yes or no answer.",
    ),
    "number_yesno": (
        "Is the noun in this {noun} {label}? Answer yes or no.",
        "Is the noun here in the {label} form? Reply yes or no.",
        "Yes or no: is the main noun {label}?",
        "Does the noun in this {noun} take its {label} form? Answer with yes or no.",
        "Grammatically, is the noun in this {noun} {label}? Say yes or no.",
        "Is the noun used here {label} in number? Answer yes or no.",
        "Is the thing named in this {noun} written in the {label}? Yes or no?",
        "Would a grammarian call the noun in this {noun} {label}? Please answer yes or no.",
        "Does the {noun} use the {label} of its noun? Answer yes or no.",
        "Is {label} the grammatical number of the noun here? Respond with yes or no.",
        "Is the noun in this {noun} {label} rather than the other number? Just say yes or no.",
        "Does this {noun} mention its noun in the {label}? Give a yes or no answer.",
    ),
    "tense_yesno": (
        "Is this {noun} in the {label} tense? Answer yes or no.",
        "Is the verb in this {noun} in the {label} tense? Reply yes or no.",
        "Yes or no: is this {noun} written in the {label} tense?",
        "Does this {noun} use the {label} tense? Answer with yes or no.",
        "Does the action here happen in the {label}? Say yes or no.",
        "Is the tense of the verb here {label}? Answer yes or no.",
        "Would a grammarian say this {noun} is in the {label} tense? Yes or no?",
        "Is {label} the tense of this {noun}? Please answer yes or no.",
        "Is the verb here in its {label}-tense form? Answer yes or no.",
        "Does this {noun} describe the {label}? Respond with yes or no.",
        "Is the {noun} set in the {label} tense? Just say yes or no.",
        "Is this {noun}'s verb in {label} tense? Give a yes or no answer.",
    ),
    "origin_yesno": (
        "Was this {noun} made by a company from {label}? Answer yes or no.",
        "Does this {noun} come from {label}? Reply yes or no.",
        "Yes or no: is this {noun} from {label}?",
        "Is this {noun} the product of a maker in {label}? Answer with yes or no.",
        "Was this {noun} designed in {label}? Say yes or no.",
        "Is {label} where this {noun} was built? Answer yes or no.",
        "Does the maker of this {noun} come from {label}? Yes or no?",
        "Is this {noun} a model from {label}? Please answer yes or no.",
        "Did this {noun} originate in {label}? Answer yes or no.",
        "Is the brand of this {noun} based in {label}? Respond with yes or no.",
        "Is {label} the home of this {noun}'s maker? Just say yes or no.",
        "Does this {noun} have its origins in {label}? Give a yes or no answer.",
    ),
    "quantity_yesno": (
        "Is this {noun} a unit of {label}? Answer yes or no.",
        "Does this {noun} measure {label}? Reply yes or no.",
        "Yes or no: is this {noun} used to measure {label}?",
        "Would you use this {noun} for {label}? Answer with yes or no.",
        "Is {label} what this {noun} measures? Say yes or no.",
        "Is this {noun} a measure of {label}? Answer yes or no.",
        "Is this {noun} meant for measuring {label}? Yes or no?",
        "Can you express {label} in this {noun}? Please answer yes or no.",
        "Does this {noun} belong with the units of {label}? Answer yes or no.",
        "Is the quantity measured here {label}? Respond with yes or no.",
        "Is this {noun} for {label}? Just say yes or no.",
        "Does this {noun} quantify {label}? Give a yes or no answer.",
    ),
    "month_yesno": (
        "Does this {noun} fall in {label}? Answer yes or no.",
        "Is this {noun} celebrated in {label}? Reply yes or no.",
        "Yes or no: is this {noun} in {label}?",
        "Does this {noun} take place in {label}? Answer with yes or no.",
        "Is {label} the month of this {noun}? Say yes or no.",
        "Would you mark this {noun} on the {label} page of a calendar? Answer yes or no.",
        "Do people observe this {noun} in {label}? Yes or no?",
        "Is this {noun} held in {label}? Please answer yes or no.",
        "Does the date of this {noun} lie in {label}? Answer yes or no.",
        "Is {label} when this {noun} happens? Respond with yes or no.",
        "Does this {noun} come around in {label}? Just say yes or no.",
        "Is the month of this {noun} {label}? Give a yes or no answer.",
    ),
    "element_family_yesno": (
        "Is this {noun} {label}? Answer yes or no.",
        "Would a chemist call this {noun} {label}? Reply yes or no.",
        "Yes or no: is this {noun} {label}?",
        "Is this {noun} classed as {label}? Answer with yes or no.",
        "Does this {noun} count as {label}? Say yes or no.",
        "Is it correct that this {noun} is {label}? Answer yes or no.",
        "On the periodic table, is this {noun} {label}? Yes or no?",
        "Would you group this {noun} as {label}? Please answer yes or no.",
        "Is this {noun} known as {label}? Answer yes or no.",
        "Is this {noun} categorised as {label}? Respond with yes or no.",
        "Chemically, is this {noun} {label}? Just say yes or no.",
        "Is {label} a fair description of this {noun}? Give a yes or no answer.",
    ),
}


def heldout_templates(family: str) -> tuple[int, ...]:
    """Indices of the family's held-out templates: a fixed, seeded subset, the same on every machine."""
    if family not in FAMILIES:
        raise UavError(f"unknown question family {family!r}", f"use one of: {', '.join(FAMILIES)}")
    n = len(FAMILIES[family])
    return tuple(sorted(random.Random(f"{HELDOUT_SEED}/{family}").sample(range(n), HELDOUT_PER_FAMILY)))


def template_split(family: str) -> dict[str, list[str]]:
    """{"seen": [template ids], "heldout": [template ids]} of one family (ids are ``FAMILY/INDEX``)."""
    held = set(heldout_templates(family))
    ids = {i: f"{family}/{i}" for i in range(len(FAMILIES[family]))}
    return {"seen": [t for i, t in ids.items() if i not in held], "heldout": [t for i, t in ids.items() if i in held]}


@dataclass(frozen=True)
class Relation:
    """One labeled fact of a source's examples, asked about with one question family.

    ``fact`` keys the example's private ``_facts`` dict (the true value); ``_also`` (optional, same key) lists
    other values that are also true of it ("French" for Switzerland when the main language is German), which
    are never asked as the false value. ``phrase`` turns a value into words ("tech" -> "technology").
    """

    fact: str  # key in the example's _facts
    family: str  # key in FAMILIES
    noun: str  # what the text is, for the {noun} slot
    phrase: dict[str, str] = field(default_factory=dict)  # value -> words for the {label} slot (default: itself)

    def words(self, value: str) -> str:
        return self.phrase.get(value, value)


def ask(family: str, index: int, noun: str, label: str) -> str:
    return FAMILIES[family][index].format(noun=noun, label=label)


def yesno_pairs(ex: dict, relation: Relation, values: list[str], seed: int = 0) -> list[dict]:
    """The yes/no qa pairs of one example for one relation (none if it lacks the fact or there is no false value).

    A true and a false question with seen templates; on val/test examples also the same two with held-out
    templates (paired: only the phrasing differs).
    """
    true = (ex.get("_facts") or {}).get(relation.fact)
    if not true:
        return []
    also = set((ex.get("_also") or {}).get(relation.fact, ()))
    wrong = sorted(v for v in set(values) if v != true and v not in also)
    if not wrong:
        return []
    key = f"{seed}/{ex['id']}/{relation.fact}"
    false = random.Random(f"{key}/false").choice(wrong)
    held = heldout_templates(relation.family)
    pools = {"seen": [i for i in range(len(FAMILIES[relation.family])) if i not in held], "heldout": list(held)}
    phrasings = ("seen", "heldout") if ex["split"] != "train" else ("seen",)
    out = []
    for phrasing in phrasings:
        for answer, value in (("yes", true), ("no", false)):
            i = random.Random(f"{key}/{phrasing}/{answer}").choice(pools[phrasing])
            out.append({"question": ask(relation.family, i, relation.noun, relation.words(value)), "answer": answer,
                        "kind": "yesno", "template": f"{relation.family}/{i}", "phrasing": phrasing})
    return out


def add_yesno(examples: list[dict], relations: list[Relation], seed: int = 0) -> None:
    """Append yes/no pairs to every example of one source, in place; false values come from the true values
    of the same relation across ``examples`` (so they are real values of this source, never made up)."""
    for rel in relations:
        if rel.family not in FAMILIES:
            raise UavError(f"relation {rel.fact!r} names unknown question family {rel.family!r}",
                           f"use one of: {', '.join(FAMILIES)}")
        values = sorted({v for e in examples if (v := (e.get("_facts") or {}).get(rel.fact))})
        for e in examples:
            e["qa"].extend(yesno_pairs(e, rel, values, seed))
