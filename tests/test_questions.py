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

from uav_cache.examples import questions, recipes, texts, wordlists  # noqa: E402


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


# --- the labeled sources and the oracle recipe ------------------------------------------------

import socket  # noqa: E402
from collections import Counter  # noqa: E402

NEW_SOURCES = ("word_sentiment", "noun_number", "verb_tense", "language_id", "car_origin", "unit_dimension",
               "holiday_month", "element_family", "us_state")
SMALL = {"element_family": 90, "us_state": 50}  # what the data allows; every other source has >= 100


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> tuple[schema.ExampleSet, dict]:
    """The oracle build, made with every socket refused: the sources read package files, never the network."""
    real = socket.socket.connect

    def refuse(*a, **k):
        raise OSError("network used during a build")

    socket.socket.connect = refuse
    try:
        es = recipes.build("oracle", seed=0)
    finally:
        socket.socket.connect = real
    out = es.save(tmp_path_factory.mktemp("oracle"))
    return es, json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("source", NEW_SOURCES)
def test_new_source_loads_offline_with_labels(source):
    pool = recipes.SOURCES[source]()
    assert len(pool) >= SMALL.get(source, 100)
    assert len({e["id"] for e in pool}) == len(pool) and len({e["text"] for e in pool}) == len(pool)
    for e in pool:
        schema.check_example({k: v for k, v in e.items() if not k.startswith("_")})
        assert e["_facts"] and e["qa"][0]["answer"] == next(iter(e["_facts"].values()))
        assert ("label" in e) == (e["task"] == "classification")
        assert len(e["text"].split()) <= texts.MAX_WORDS
    assert source in recipes.YESNO and source in recipes.SOURCE_INFO


def test_labels_are_honest_on_known_cases():
    by_text = lambda src: {e["id"].split("/", 1)[1]: e for e in recipes.SOURCES[src]()}  # noqa: E731
    assert by_text("element_family")["Ne"]["label"] == "noble gas"
    assert by_text("element_family")["Fe"]["label"] == "transition metal"
    assert by_text("us_state")["OH"]["qa"][0]["answer"] == "Columbus"
    units = by_text("unit_dimension")
    assert units["kilometer"]["label"] == "length" and units["hectare"]["label"] == "area"
    words = by_text("word_sentiment")
    assert words["good"]["label"] == "positive" and words["bad"]["label"] == "negative"
    for e in recipes.SOURCES["verb_tense"]():
        base = e["id"].split("/", 1)[1]
        assert (f" {base} " in f" {e['text']} ") == (e["label"] == "present"), e
    cars = {e["text"]: e["label"] for e in recipes.SOURCES["car_origin"]()}
    assert all(v == "Japan" for t, v in cars.items() if " toyota " in f" {t} ")


def test_language_id_words_belong_to_one_language_only():
    by_lang: dict[str, set[str]] = {}
    for e in recipes.SOURCES["language_id"]():
        by_lang.setdefault(e["label"], set()).update(w.strip(".").lower() for w in e["text"].split())
    langs = sorted(by_lang)
    assert len(langs) == len(wordlists.LANGUAGES)
    for i, a in enumerate(langs):
        for b in langs[i + 1:]:
            assert not by_lang[a] & by_lang[b], (a, b)


def test_oracle_counts_are_in_the_manifest(oracle):
    es, manifest = oracle
    spec = recipes.RECIPES["oracle"]
    assert manifest["source_counts"] == es.source_counts()
    for source, n in spec.counts.items():
        got = manifest["source_counts"][source]
        assert got == n if n != recipes.ALL else got == len(recipes.SOURCES[source]()), source
    assert set(NEW_SOURCES) <= set(manifest["source_counts"])
    assert sum(1 for s in NEW_SOURCES if manifest["source_counts"][s] >= 100) >= 6
    for source in spec.counts:
        info = manifest["sources"][source]
        assert info["license"] and all(info["packages"].values()), source  # every data package installed, versioned
    assert len(es.examples) <= 2500  # a SmolLM2 harvest of it stays within ~5 min on the 2-core box


def test_oracle_heldout_split_is_written_down(oracle):
    es, manifest = oracle
    held, train = set(manifest["heldout_sources"]), set(manifest["training_sources"])
    assert len(held) >= 3 and not held & train and held | train == set(recipes.RECIPES["oracle"].counts)
    assert held == set(recipes.ORACLE_HELDOUT) and manifest["note"]
    # of different kinds: held-out datasets ask different question families
    families = {s: {r.family for r in recipes.YESNO[s]} for s in held}
    assert len(set().union(*families.values())) == len(held)
    for e in es.examples:
        assert e.get("heldout_dataset", False) == (e["source"] in held), e["id"]
    for family, ids in manifest["heldout_templates"].items():
        assert ids == questions.template_split(family)["heldout"]


def test_oracle_yes_no_is_balanced_per_source_and_phrasing(oracle):
    es, manifest = oracle
    labeled = [s for s in recipes.RECIPES["oracle"].counts if recipes.YESNO.get(s)]
    for source in labeled:
        pairs = [p for e in es.examples if e["source"] == source for p in e["qa"] if schema.qa_kind(p) == "yesno"]
        assert pairs, source
        for phrasing in ("seen", "heldout"):
            c = Counter(p["answer"] for p in pairs if p["phrasing"] == phrasing)
            assert c["yes"] == c["no"] > 0, (source, phrasing, c)
        q = manifest["qa_counts"][source]
        assert q["yes"] == q["no"] == q["yesno"] / 2
    # open questions stay beside them
    assert all(any(schema.qa_kind(p) == "open" for p in e["qa"]) for e in es.examples)


def test_oracle_heldout_phrasings_are_never_seen_and_never_on_train(oracle):
    es, _ = oracle
    held_ids = {t for f in questions.FAMILIES for t in questions.template_split(f)["heldout"]}
    for e in es.examples:
        schema.check_example(e)
        assert not [k for k in e if k.startswith("_")]
        for p in e["qa"]:
            if schema.qa_kind(p) != "yesno":
                continue
            assert (p["template"] in held_ids) == (p["phrasing"] == "heldout"), p
            assert p["phrasing"] == "seen" or e["split"] != "train", e["id"]
            family, i = p["template"].split("/")
            assert "{" not in p["question"] and int(i) < len(questions.FAMILIES[family])  # rendered, no slot left


def test_oracle_build_is_deterministic_and_splits_by_hash(oracle):
    es, _ = oracle
    again = recipes.build("oracle", seed=0)
    assert again.fingerprint == es.fingerprint
    hashed = [e for e in es.examples if e["source"] != "aclsum"]
    assert all(e["split"] == schema.hash_split(e["id"]) for e in hashed)


def test_demo_and_full_carry_none_of_the_new_keys(tmp_path):
    """Old recipes build exactly as before: no yes/no pairs, no held-out marks, no private keys."""
    demo = recipes.build("demo")
    for e in demo.examples:
        assert not {"heldout_dataset"} & set(e) and not [k for k in e if k.startswith("_")]
        assert all(set(p) == {"question", "answer"} for p in e["qa"])
    assert "heldout_sources" not in demo.meta


def test_stale_recipe_cache_is_rebuilt(oracle, tmp_path, monkeypatch):
    es, _ = oracle
    es.save(tmp_path / "oracle")
    monkeypatch.setattr(load, "build", lambda *a, **k: pytest.fail("cache not used"))
    assert load.load_examples("oracle", data_dir=tmp_path).fingerprint == es.fingerprint
    # a recipe definition that moved on (other counts, templates or package versions) no longer matches
    m = json.loads((tmp_path / "oracle" / "manifest.json").read_text())
    m["recipe_hash"] = "0" * 64
    (tmp_path / "oracle" / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setattr(load, "build", lambda *a, **k: es)
    assert load.load_examples("oracle", data_dir=tmp_path).fingerprint == es.fingerprint
    assert json.loads((tmp_path / "oracle" / "manifest.json").read_text())["recipe_hash"] == es.meta["recipe_hash"]


def test_data_build_cli_reports_the_split(oracle, tmp_path, monkeypatch, capsys):
    import uav_cache.examples as examples
    from uav_cache.cli import data_build

    es, _ = oracle
    monkeypatch.setattr(examples, "build", lambda recipe, seed=0: es)
    data_build(recipe="oracle", out=tmp_path / "o", seed=0)
    out = capsys.readouterr().out
    assert f"{len(es.examples)} examples" in out and "held-out templates: 39 of 156" in out
    held = [line.split()[0] for line in out.splitlines() if line.endswith("HELD-OUT DATASET")]
    assert held == list(recipes.ORACLE_HELDOUT)
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["heldout_sources"] == held
