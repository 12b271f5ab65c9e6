"""uav_cache.examples: deterministic builds from installed data packages, and strict user-JSONL loading."""

import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here; fail fast, not after retries

import pytest

from uav_cache.examples import load, recipes, schema, texts
from uav_cache.errors import UavError


@pytest.fixture(scope="module")
def demo() -> schema.ExampleSet:
    return recipes.build("demo", seed=0)


def by_source(es: schema.ExampleSet, source: str) -> list[dict]:
    return [e for e in es.examples if e["source"] == source]


# --- building ---------------------------------------------------------------------------------


def test_build_is_deterministic(demo):
    again = recipes.build("demo", seed=0)
    assert again.fingerprint == demo.fingerprint
    assert again.examples == demo.examples
    assert recipes.build("demo", seed=1).fingerprint != demo.fingerprint


def test_demo_counts_follow_recipe(demo):
    counts = demo.source_counts()
    for source, n in recipes.RECIPES["demo"].counts.items():
        assert counts[source] == n, source
    assert len(demo.examples) == sum(recipes.RECIPES["demo"].counts.values())


def test_every_example_matches_schema(demo):
    ids = [e["id"] for e in demo.examples]
    assert len(ids) == len(set(ids))
    for e in demo.examples:
        schema.check_example(e)
        assert e["id"].startswith(e["source"] + "/")
        assert len(e["text"].split()) <= texts.MAX_WORDS
        assert e["qa"] and all(p["question"].strip() and p["answer"].strip() for p in e["qa"])
        assert ("label" in e) == (e["task"] == "classification")


def test_split_proportions(demo):
    hashed = [e for e in demo.examples if e["source"] != "aclsum"]
    frac = {s: n / len(hashed) for s, n in Counter(e["split"] for e in hashed).items()}
    assert 0.74 < frac["train"] < 0.86 and 0.06 < frac["val"] < 0.14 and 0.06 < frac["test"] < 0.14
    assert all(e["split"] == schema.hash_split(e["id"]) for e in hashed)
    # aclsum keeps its own split (100 train / 50 val / 100 test in the package): a subset draws from all three
    acl = by_source(demo, "aclsum")
    assert set(Counter(e["split"] for e in acl)) == {"train", "val", "test"}


def test_knowledge_facts_do_not_state_their_answer(demo):
    for source in ("country_fact_knowledge", "city_country"):
        for e in by_source(demo, source):
            for p in e["qa"]:
                assert p["answer"].lower() not in e["text"].lower(), e


def test_text_facts_do_state_their_answer(demo):
    for e in by_source(demo, "country_fact_text"):
        assert all(p["answer"] in e["text"] for p in e["qa"] if "capital" in p["question"] or "currency" in p["question"])


def test_classification_is_balanced(demo):
    for source, labels in (("bbc_topic", 5), ("tweet_sentiment", 3)):
        counts = Counter(e["label"] for e in by_source(demo, source))
        assert len(counts) == labels and len(set(counts.values())) == 1, (source, counts)
        assert all(e["qa"][0]["answer"] == e["label"] for e in by_source(demo, source))
    assert set(Counter(e["label"] for e in by_source(demo, "bbc_topic"))) == {
        "business", "entertainment", "politics", "sport", "tech"}


def test_bbc_sources_share_no_text(demo):
    topic = {e["text"] for e in by_source(demo, "bbc_topic")}
    headline = {e["text"] for e in by_source(demo, "bbc_headline")}
    assert not topic & headline
    assert not {e["id"].split("/", 1)[1] for e in texts.src_bbc_topic()} & {
        e["id"].split("/", 1)[1] for e in texts.src_bbc_headline()}


def test_unknown_recipe():
    with pytest.raises(UavError, match="demo"):
        recipes.build("nope")


# --- saving and loading -----------------------------------------------------------------------


def test_jsonl_round_trip(demo, tmp_path):
    out = demo.save(tmp_path / "demo")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == demo.fingerprint
    assert manifest["split_sizes"] == demo.split_sizes()
    assert manifest["source_counts"] == demo.source_counts()
    assert manifest["builder_version"] == schema.BUILDER_VERSION and manifest["created"]
    for src in (out, out / "examples.jsonl"):
        loaded = load.load_examples(str(src))
        assert loaded.examples == demo.examples
        assert loaded.fingerprint == demo.fingerprint


def test_recipe_is_cached_in_data_dir(demo, tmp_path, monkeypatch):
    first = load.load_examples("demo", data_dir=tmp_path)
    assert first.fingerprint == demo.fingerprint
    assert (tmp_path / "demo" / "examples.jsonl").is_file()
    monkeypatch.setattr(load, "build", lambda *a, **k: pytest.fail("cache not used"))
    assert load.load_examples("demo", data_dir=tmp_path, limit=5).examples == demo.examples[:5]
    # a tampered cache no longer matches its manifest fingerprint and is rebuilt
    path = tmp_path / "demo" / "examples.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    monkeypatch.setattr(load, "build", lambda *a, **k: demo)
    assert load.load_examples("demo", data_dir=tmp_path).fingerprint == demo.fingerprint


def write(tmp_path: Path, content: str | bytes, name: str = "user.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_user_jsonl_defaults(tmp_path):
    path = write(tmp_path, '{"text": "hello there"}\n\n{"id": "b", "text": "bye", "label": "x", "split": "val"}\n')
    es = load.load_examples(str(path))
    a, b = es.examples
    assert es.name == "user"
    assert a["id"] == "1" and a["qa"] == [] and a["split"] == schema.hash_split("1") and a["source"] == "user"
    assert b["id"] == "b" and b["task"] == "classification" and b["split"] == "val"


def test_user_tasks_are_any_name(tmp_path):
    """Own data keeps its own task names: each becomes a report group of its own ("overall" is taken)."""
    path = write(tmp_path, '{"id": "a", "text": "Paris is in France.", "task": "fact_retrieval"}\n'
                           '{"id": "b", "text": "Bonjour.", "task": "translation"}\n')
    assert [e["task"] for e in load.load_examples(str(path)).examples] == ["fact_retrieval", "translation"]
    for bad in ('""', '"overall"', "3"):
        with pytest.raises(UavError, match="'task' must be a non-empty name"):
            load.load_examples(str(write(tmp_path, f'{{"id": "a", "text": "x", "task": {bad}}}\n', "bad.jsonl")))


def test_limit(tmp_path):
    path = write(tmp_path, "".join(json.dumps({"id": f"e{i}", "text": f"text {i}"}) + "\n" for i in range(10)))
    es = load.load_examples(str(path), limit=3)
    assert [e["id"] for e in es.examples] == ["e0", "e1", "e2"]
    assert es.fingerprint == schema.fingerprint(es.examples)
    assert len(load.load_examples(str(path), limit=100).examples) == 10
    with pytest.raises(UavError):
        load.load_examples(str(path), limit=0)


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', r"line 2: malformed JSON"),
        ('{"id": "a", "text": "ok"}\n{"id": "b"}\n', r"line 2 \(id 'b'\): 'text'"),
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": 5}\n', r"line 2 \(id 'b'\): 'text'"),
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": "  \\n "}\n', r"line 2 \(id 'b'\): 'text'"),
        ('{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n', r"line 2: duplicate id 'a' \(first seen on line 1\)"),
        (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n', r"line 2: not valid UTF-8"),
        ('{"id": "a", "text": "ok"}\n[1, 2]\n', r"line 2: expected a JSON object"),
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": "x", "split": "dev"}\n', r"line 2 \(id 'b'\): 'split'"),
        ('{"id": "a", "text": "ok", "qa": [{"question": "q"}]}\n', r"line 1 \(id 'a'\): 'qa'"),
        ("", r"no examples in .*user\.jsonl"),
        ("\n  \n", r"no examples in .*user\.jsonl"),
    ],
)
def test_bad_user_jsonl(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(UavError, match=expected) as err:
        load.load_examples(str(path))
    assert str(path) in err.value.problem and err.value.fix


def test_bad_sources(tmp_path):
    with pytest.raises(UavError, match="file not found"):
        load.load_examples(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UavError, match="neither a .jsonl nor a .txt"):
        load.load_examples(str(write(tmp_path, "a,b\n", "data.csv")))
    with pytest.raises(UavError, match="no examples.jsonl"):
        load.load_examples(str(tmp_path))


def test_unknown_name_lists_recipes_and_suggests_jsonl():
    with pytest.raises(UavError, match=r"'no-such/dataset-xyz'.*demo, full") as err:
        load.load_examples("no-such/dataset-xyz")
    assert "JSONL" in err.value.fix


def test_the_new_entity_sets_keep_choice_and_test_apart():
    """Choices about new kinds of text are made on new_entities_val, the README's numbers come from new_entities:
    each loads as a dataset, is all one split, asks about its own entity kinds, and the two share no text or kind."""
    root = Path(__file__).resolve().parent.parent / "pipelines" / "evalsets"
    sets = {split: load.load_examples(str(root / name)) for split, name in
            (("test", "new_entities.jsonl"), ("val", "new_entities_val.jsonl"))}
    kinds = {}
    for split, ex in sets.items():
        assert len(ex.examples) == 48 and {e["split"] for e in ex.examples} == {split}
        assert all(e["qa"] and e["qa"][0]["answer"].lower() in e["text"].lower() for e in ex.examples)
        kinds[split] = {e["source"] for e in ex.examples}
    assert not kinds["test"] & kinds["val"]
    assert not {e["text"] for e in sets["test"].examples} & {e["text"] for e in sets["val"].examples}
