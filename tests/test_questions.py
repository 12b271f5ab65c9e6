"""The qa-pair schema extension (kind, template, phrasing) and the yes/no question generator."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from uav_cache.errors import UavError
from uav_cache.examples import load, schema


def ex(**qa_extra) -> dict:
    return {"id": "a", "text": "t", "task": "gist", "source": "s", "split": "train",
            "qa": [{"question": "Is this about sport?", "answer": "no", **qa_extra}]}


# --- schema ---------------------------------------------------------------------------------


def test_old_pairs_read_as_open_and_seen():
    pair = {"question": "What is the topic of this text?", "answer": "sport"}
    assert schema.qa_kind(pair) == "open" and schema.qa_phrasing(pair) == "seen"
    schema.check_example({**ex(), "qa": [pair]})


@pytest.mark.parametrize("answer", ["yes", "No", " YES. ", "no."])
def test_yes_no_answers_read_as_yesno(answer):
    assert schema.qa_kind({"question": "q", "answer": answer}) == "yesno"
    assert schema.yes_no(answer) in ("yes", "no")


def test_generated_keys_validate():
    schema.check_example(ex(kind="yesno", template="topic_yesno/3", phrasing="heldout"))
    schema.check_example({**ex(), "heldout_dataset": True})


@pytest.mark.parametrize("extra, match", [
    ({"kind": "multiple_choice"}, r"qa\[0\] 'kind' must be one of open, yesno"),
    ({"kind": "yesno", "answer": "maybe"}, r"qa\[0\] is kind 'yesno' but its answer is 'maybe'"),
    ({"template": ""}, r"qa\[0\] 'template' must be a non-empty string"),
    ({"phrasing": "new"}, r"qa\[0\] 'phrasing' must be one of seen, heldout"),
])
def test_bad_generated_keys(extra, match):
    with pytest.raises(UavError, match=match) as err:
        schema.check_example(ex(**extra), "f.jsonl line 3")
    assert "f.jsonl line 3 (id 'a')" in err.value.problem and err.value.fix


def test_heldout_dataset_must_be_bool():
    with pytest.raises(UavError, match="'heldout_dataset' must be true or false"):
        schema.check_example({**ex(), "heldout_dataset": "yes"})


def test_user_jsonl_with_yes_no_answers_loads(tmp_path):
    rows = [
        {"text": "Shares fell sharply in Tokyo.", "qa": [{"question": "Is this headline about China? Answer yes or no.",
                                                          "answer": "no"}]},
        {"text": "Beijing opens a new airport.", "qa": [{"question": "Is this about China?", "answer": "Yes"},
                                                        {"question": "What is it about?", "answer": "an airport"}]},
    ]
    path = tmp_path / "yn.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    es = load.load_examples(str(path))
    kinds = [schema.qa_kind(p) for e in es.examples for p in e["qa"]]
    assert kinds == ["yesno", "yesno", "open"]
    assert all(schema.qa_phrasing(p) == "seen" for e in es.examples for p in e["qa"])


# --- the generator ----------------------------------------------------------------------------

from uav_cache.examples import corpora, questions  # noqa: E402


@pytest.mark.parametrize("family", sorted(questions.FAMILIES))
def test_family_has_ten_distinct_templates_that_ask_for_yes_or_no(family):
    templates = questions.FAMILIES[family]
    assert len(templates) >= 10 and len(set(templates)) == len(templates)
    for t in templates:
        q = t.format(noun="thing", label="LABEL")
        assert "LABEL" in q and "yes or no" in q.lower(), t


@pytest.mark.parametrize("family", sorted(questions.FAMILIES))
def test_heldout_templates_are_a_fixed_subset(family):
    held = questions.heldout_templates(family)
    assert len(held) == questions.HELDOUT_PER_FAMILY == len(set(held))
    assert set(held) <= set(range(len(questions.FAMILIES[family])))
    assert questions.heldout_templates(family) == held  # seeded, not drawn afresh
    split = questions.template_split(family)
    assert set(split["seen"]) | set(split["heldout"]) == {f"{family}/{i}" for i in range(len(questions.FAMILIES[family]))}
    assert not set(split["seen"]) & set(split["heldout"])


def test_heldout_subsets_differ_between_families():
    """One seed per family: the held-out indices are not the same three everywhere."""
    assert len({questions.heldout_templates(f) for f in questions.FAMILIES}) > 1


def labeled(split: str, **kw) -> dict:
    return {"id": f"src/{split}", "text": "t", "task": "classification", "source": "src", "split": split,
            "label": "sport", "qa": [], "_facts": {"topic": "sport"}, **kw}


REL = questions.Relation("topic", "topic_yesno", "article", {"tech": "technology"})
VALUES = ["business", "politics", "sport", "tech"]


def test_train_examples_get_one_yes_and_one_no_in_seen_phrasings():
    pairs = questions.yesno_pairs(labeled("train"), REL, VALUES)
    assert [p["answer"] for p in pairs] == ["yes", "no"] and {p["phrasing"] for p in pairs} == {"seen"}
    held = {f"topic_yesno/{i}" for i in questions.heldout_templates("topic_yesno")}
    assert not {p["template"] for p in pairs} & held
    assert "sport" in pairs[0]["question"] and "sport" not in pairs[1]["question"]
    assert all(p["kind"] == "yesno" for p in pairs)


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_examples_also_get_the_same_questions_in_heldout_phrasings(split):
    pairs = questions.yesno_pairs(labeled(split), REL, VALUES)
    seen = [p for p in pairs if p["phrasing"] == "seen"]
    held = [p for p in pairs if p["phrasing"] == "heldout"]
    assert [p["answer"] for p in seen] == [p["answer"] for p in held] == ["yes", "no"]
    heldout_ids = {f"topic_yesno/{i}" for i in questions.heldout_templates("topic_yesno")}
    assert {p["template"] for p in held} <= heldout_ids and not {p["template"] for p in seen} & heldout_ids
    # paired: the false value asked is the same in both phrasings, only the wording differs
    false = [v for v in ("business", "politics", "technology") if v in seen[1]["question"]]
    assert len(false) == 1 and false[0] in held[1]["question"]


def test_false_value_is_never_also_true_and_phrase_is_used():
    ex = labeled("train", _also={"topic": ["business", "politics"]})
    for seed in range(20):
        no = questions.yesno_pairs(ex, REL, VALUES, seed)[1]
        assert "technology" in no["question"] and "tech?" not in no["question"]


def test_no_question_without_a_fact_or_a_false_value():
    assert questions.yesno_pairs({**labeled("train"), "_facts": {}}, REL, VALUES) == []
    assert questions.yesno_pairs(labeled("train"), REL, ["sport"]) == []


def test_generator_is_deterministic_and_seeded():
    def exs() -> list[dict]:
        return [labeled(s) | {"id": f"src/{i}", "_facts": {"topic": VALUES[i % 4]}}
                for i, s in enumerate(["train", "val", "test"] * 5)]

    a, b, c = exs(), exs(), exs()
    questions.add_yesno(a, [REL], seed=0)
    questions.add_yesno(b, [REL], seed=0)
    questions.add_yesno(c, [REL], seed=1)
    assert a == b and a != c
    assert sum(len(e["qa"]) for e in a) == 5 * (2 + 4 + 4)


def test_unknown_family_is_refused():
    with pytest.raises(UavError, match="unknown question family 'nope'"):
        questions.add_yesno([labeled("train")], [questions.Relation("topic", "nope", "article")])
