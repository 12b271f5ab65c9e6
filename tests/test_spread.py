"""uav_eval.spread on hand-made results: mean ± spread over seeds, and when "reads" may be said."""

from __future__ import annotations

import json

import pytest

from uav_eval.results import Results
from uav_eval.spread import FORMAT, beside_reference, fmt, load_reference, stat, summarise, verdict

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _seed(uav: list[float], shuffled: list[float], lo: float, reads: bool) -> Results:
    """One seed's results for a classification group: per-item accuracy of uav and shuffled, and its reading cell."""
    items = [{"method": m, "row": i, "question": "q", "task": "classification", "acc": v}
             for m, vals in (("uav", uav), ("shuffled", shuffled)) for i, v in enumerate(vals)]
    mean_u, mean_s = sum(uav) / len(uav), sum(shuffled) / len(shuffled)
    cell = {"mean": mean_u - mean_s, "lo": lo, "hi": mean_u - mean_s + 0.2, "n": len(uav), "metric": "acc",
            "uav": mean_u, "shuffled": mean_s, "reads": reads}
    return Results(reading={"by_task": {"classification": cell}}, items=items)


def test_stat_is_mean_sample_sd_and_range():
    s = stat([0.8, 0.85, 0.9])
    assert s["mean"] == pytest.approx(0.85) and s["sd"] == pytest.approx(0.05) and (s["min"], s["max"]) == (0.8, 0.9)
    assert stat([0.5])["sd"] == 0.0 and stat([])["mean"] is None
    assert fmt(s) == "0.85 ± 0.05 (0.80–0.90)" and fmt(stat([0.5])) == "0.50" and fmt(None) == "–"


def test_reads_only_when_every_seed_or_the_pooled_interval_is_above_zero():
    assert verdict([True, True, True], -0.1) == "yes"
    assert verdict([True, False, True], 0.02) == "yes (pooled)"
    assert verdict([True, False, True], -0.01) == "no" and verdict([], None) == "no"


def test_summarise_pools_the_items_over_seeds():
    strong = [1.0] * 16 + [0.0] * 4
    weak = [0.0] * 20
    seeds = [_seed(strong, weak, 0.5, True), _seed(strong, weak, 0.5, True), _seed([0.0] * 20, weak, -0.1, False)]
    out = summarise({"self": seeds}, [0, 1, 2], command="make demo SEEDS=3")
    c = out["runs"]["self"]["classification"]
    assert out["format"] == FORMAT and out["seeds"] == [0, 1, 2] and c["metric"] == "acc" and c["n"] == 20
    assert c["uav"]["n"] == 3 and c["uav"]["min"] == 0.0 and c["uav"]["max"] == pytest.approx(0.8)
    assert c["pooled"]["mean"] == pytest.approx(0.8 * 2 / 3) and c["pooled"]["lo"] > 0
    assert c["reads"] == "yes (pooled)"  # one seed does not read; the seed-averaged items do
    json.dumps(out)  # plain JSON, the reference file's format


def test_the_shipped_reference_is_measured_and_a_placeholder_says_so():
    shipped = load_reference(ROOT / "docs" / "results" / "demo-spread.json")
    assert shipped is not None and len(shipped["seeds"]) >= 3  # the demo's three runs, each task group over 3 seeds
    assert set(shipped["runs"]) == {"self", "cross", "transfer"}
    for groups in shipped["runs"].values():
        assert {"classification", "fact", "gist"} <= set(groups)
        assert all(g["uav"]["n"] == len(shipped["seeds"]) for g in groups.values())
    ref = {"format": "uav-seed-spread", "version": 1, "measured": False, "seeds": [], "runs": {},
           "note": "not measured yet: no multi-seed run of this recipe has been recorded"}
    own = {"self": _seed([1.0] * 4, [0.0] * 4, 0.5, True)}
    assert "not measured yet" in beside_reference(own, ref, "docs/results/demo-spread.json")
    summary = summarise({"self": [own["self"]] * 3}, [0, 1, 2])  # as today's demo writes it: its control named
    filled = {**ref, "seeds": [0, 1, 2], "runs": summary["runs"], "shuffled_control": summary["shuffled_control"]}
    text = beside_reference(own, filled, "x.json")
    assert "| self | classification |" in text and "| yes |" in text  # this run's difference lies in the range


def test_a_reference_whose_limit_counted_questions_is_flagged_beside_a_run_whose_limit_counts_texts():
    """Spreads saved before --limit counted texts scored multi-question sources on other texts: say so."""
    limited = lambda counts: Results(**{**vars(_seed([1.0] * 4, [0.0] * 4, 0.5, True)),  # noqa: E731
                                        "config": {"limit": 20}, "limit_counts": counts})
    new, old = limited("texts"), limited("questions")
    assert summarise({"self": [new] * 3}, [0, 1, 2])["limit_counts"] == "texts"
    ref = {"format": FORMAT, "version": 1, "seeds": [0, 1, 2], "runs": summarise({"self": [old] * 3}, [0, 1, 2])["runs"]}
    assert "the reference's questions" in beside_reference({"self": new}, ref, "x.json")  # no key: saved before
    assert "Note:" not in beside_reference({"self": new}, {**ref, "limit_counts": "texts"}, "x.json")
    assert "Note:" not in beside_reference({"self": old}, ref, "x.json")
    assert "Note: older control" in beside_reference({"self": old}, {**ref, "note": "older control"}, "x.json")


def test_a_healthy_run_is_compared_with_the_reference_only_on_what_was_measured_alike():
    """The shipped reference was measured with a fresh adapter as its shuffled control and limits counting questions.
    A healthy run today (each group's uav inside the reference's range, uav − shuffled lower: today's shuffled control
    is the trained adapter) is compared on uav alone where the items are alike (one question per text), and a group
    with several questions per text (other texts under the old limit) is said to be incomparable, not "no"."""
    ref = load_reference(ROOT / "docs" / "results" / "demo-spread.json")
    cls, fact = ref["runs"]["self"]["classification"], ref["runs"]["self"]["fact"]
    u_cls, u_fact = ((c["uav"]["min"] + c["uav"]["max"]) / 2 for c in (cls, fact))

    def healthy(uav: float, questions: int, task: str) -> dict:
        return {"items": [{"method": "uav", "row": r, "question": f"q{q}", "task": task}
                          for r in range(12) for q in range(questions)],
                "cell": {"mean": uav - 0.45, "lo": uav - 0.6, "hi": uav - 0.3, "n": 12 * questions,
                         "metric": "acc" if task == "classification" else "f1", "uav": uav, "shuffled": 0.45,
                         "reads": True}}

    parts = {"classification": healthy(u_cls, 1, "classification"), "fact": healthy(u_fact, 6, "fact")}
    res = Results(reading={"by_task": {g: p["cell"] for g, p in parts.items()}}, config={"limit": 20},
                  limit_counts="texts", items=[i for p in parts.values() for i in p["items"]])
    assert not cls["diff"]["min"] <= res.reading["by_task"]["classification"]["mean"] <= cls["diff"]["max"]
    text = beside_reference({"self": res}, ref, "docs/results/demo-spread.json")
    rows = {ln.split(" | ")[1]: ln for ln in text.splitlines() if ln.startswith("| self |")}
    assert rows["classification"].endswith("| uav: yes; uav − shuffled not comparable: the reference's shuffled "
                                           "control was a fresh adapter, this run's the trained adapter |")
    assert rows["fact"].endswith("| not comparable: the reference's limit counted questions, this run's texts: it "
                                 "scored other fact texts (several questions per text) |")
    assert not [ln for ln in rows.values() if ln.endswith("| no |")]
    # measured alike (today's control, limits in texts): uav − shuffled is compared, and a real departure is flagged
    alike = {**ref, "limit_counts": "texts", "shuffled_control": "trained adapter"}
    rows = {ln.split(" | ")[1]: ln for ln in beside_reference({"self": res}, alike, "x").splitlines()
            if ln.startswith("| self |")}
    assert rows["classification"].endswith("| no |") and rows["fact"].endswith("| no |")
    assert summarise({"self": [res] * 3}, [0, 1, 2])["shuffled_control"] == "trained adapter"
