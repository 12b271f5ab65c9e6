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
    filled = {**ref, "seeds": [0, 1, 2], "runs": summarise({"self": [own["self"]] * 3}, [0, 1, 2])["runs"]}
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
