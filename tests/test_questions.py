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
