"""Results over several training seeds: mean ± spread per headline number, and a verdict that holds across seeds.

One seed's numbers are one draw: on the demo, a rerun moved self classification 0.82 → 0.85 and a fact interval's
lower end from +0.02 to −0.01, so a "reads" that flips on a rerun is not yet a result. :func:`summarise` takes each
run's evaluations, one per seed, and reports per task group the mean, the sample standard deviation and the range
over seeds of uav, shuffled and uav − shuffled. It says "reads" only where every seed's paired interval is above 0,
or where the pooled interval is: each test item's uav − shuffled averaged over the seeds, bootstrapped over items
(the items are the sampling unit; the seeds are averaged, not counted as more items).

The summary is plain JSON (:data:`FORMAT`), the same file `make demo` reads back as its reference spread
(docs/results/<recipe>-spread.json), so a one-seed demo can print its own numbers beside it. No torch import here.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from uav_cache.examples import TASKS
from uav_eval.methods import READING_METRIC
from uav_eval.metrics import paired_difference
from uav_eval.results import Results

FORMAT = "uav-seed-spread"  # the summary's "format" key, version 1: see docs/results/README.md
SHUFFLED = "trained adapter"  # the shuffled control: the run's own adapter shown another item's activation
FRESH = "fresh adapter"  # the shuffled control of older files: a freshly initialised adapter on the other activation


def stat(values: list[float]) -> dict:
    """mean, sample standard deviation (0 for one value), min and max of per-seed numbers."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max()), "n": int(len(v))}


def _pooled(seeds: list[Results], group: str, metric: str, n_boot: int = 1000) -> dict:
    """uav − shuffled per item, averaged over the seeds that scored the item, with a paired bootstrap interval."""
    per: dict[tuple, list[tuple[float, float]]] = {}
    for res in seeds:
        ref = {(r["row"], r["question"]): r for r in res.items if r["method"] == "shuffled" and r["task"] == group}
        for r in res.items:
            if r["method"] == "uav" and r["task"] == group and (r["row"], r["question"]) in ref:
                per.setdefault((r["row"], r["question"]), []).append((r[metric], ref[(r["row"], r["question"])][metric]))
    if not per:
        return {}
    u = [float(np.mean([a for a, _ in v])) for v in per.values()]
    s = [float(np.mean([b for _, b in v])) for v in per.values()]
    return paired_difference(u, s, n_boot=n_boot)


def verdict(per_seed_reads: list[bool], pooled_lo: float | None) -> str:
    """"yes" when every seed's interval is above 0; "yes (pooled)" when only the pooled one is; else "no"."""
    if per_seed_reads and all(per_seed_reads):
        return "yes"
    if pooled_lo is not None and pooled_lo > 0:
        return "yes (pooled)"
    return "no"


def summarise(runs: dict[str, list[Results]], seeds: list[int], command: str = "") -> dict:
    """{format, seeds, command, runs: {run: {group: {metric, n, uav, shuffled, diff: stat, pooled, reads}}}} from
    each run's evaluations (one Results per seed, in ``seeds`` order)."""
    counts = {r.limit_counts for rs in runs.values() for r in rs if r.limit is not None}
    out: dict = {"format": FORMAT, "version": 1, "seeds": list(seeds), "command": command,
                 **({"limit_counts": counts.pop()} if len(counts) == 1 else {}), "shuffled_control": SHUFFLED,
                 "runs": {}}
    for name, results in runs.items():
        groups = sorted({g for r in results for g in r.reading.get("by_task", {})},
                        key=lambda g: (TASKS.index(g) if g in TASKS else len(TASKS), g))
        table = {}
        for g in groups:
            cells = [r.reading["by_task"][g] for r in results if g in r.reading.get("by_task", {})]
            metric = READING_METRIC.get(g, "f1")
            pooled = _pooled(results, g, metric)
            table[g] = {"metric": metric, "n": cells[0]["n"], "uav": stat([c["uav"] for c in cells]),
                        "shuffled": stat([c["shuffled"] for c in cells]), "diff": stat([c["mean"] for c in cells]),
                        "seed_intervals": [[c["lo"], c["hi"]] for c in cells], "pooled": pooled,
                        "reads": verdict([bool(c["reads"]) for c in cells], pooled.get("lo"))}
        out["runs"][name] = table
    return out


def fmt(s: dict | None, signed: bool = False) -> str:
    """`0.83 ± 0.02 (0.81–0.85)`; one seed: the number alone; nothing: an en dash."""
    if not s or s.get("mean") is None:
        return "–"
    f = (lambda x: f"{x:+.2f}") if signed else (lambda x: f"{x:.2f}")
    if s["n"] < 2:
        return f(s["mean"])
    return f"{f(s['mean'])} ± {s['sd']:.2f} ({f(s['min'])}–{f(s['max'])})"


def table(summary: dict) -> str:
    """Markdown: per run and task group, mean ± sd (min–max) over the seeds, the pooled interval and the verdict."""
    lines = [f"Over {len(summary['seeds'])} seeds ({', '.join(map(str, summary['seeds']))}): mean ± sd (min–max). "
             "`reads`: yes when every seed's uav − shuffled interval is above 0, yes (pooled) when only the interval "
             "of the seed-averaged per-item differences is.", "",
             "| run | task group | metric | n | uav | shuffled | uav − shuffled | pooled 95% CI | reads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, groups in summary["runs"].items():
        for g, c in groups.items():
            p = c.get("pooled") or {}
            ci = f"[{p['lo']:+.2f}, {p['hi']:+.2f}]" if p else "–"
            lines.append(f"| {name} | {g} | {c['metric']} | {c['n']} | {fmt(c['uav'])} | {fmt(c['shuffled'])} | "
                         f"{fmt(c['diff'], signed=True)} | {ci} | {c['reads']} |")
    return "\n".join(lines)


def load_reference(path: Path) -> dict | None:
    """A saved summary (None when the file is missing); a placeholder carries ``measured: false`` and no runs."""
    p = Path(path)
    if not p.is_file():
        return None
    doc = json.loads(p.read_text(encoding="utf-8"))
    return doc if doc.get("format") == FORMAT else None


def _limit_note(own: dict[str, Results], ref: dict) -> list[str]:
    """A warning when this run's limit and the reference's counted different things (texts vs questions per
    source): a source with several questions per text is then scored on other texts, and its rows compare badly."""
    mine = {r.limit_counts for r in own.values() if r.limit is not None}
    theirs = ref.get("limit_counts", "questions")  # spreads saved before limits counted texts
    if not mine or mine == {theirs}:
        return []
    return ["", f"Note: this run's limit counts {'/'.join(sorted(mine))} per source, the reference's {theirs}: "
            "sources with several questions per text (facts, yes/no) were scored on different texts."]


def shuffled_control(ref: dict) -> str:
    """What a reference's shuffled control was. A file saved before it said so: the control changed together with the
    limit's unit (from questions to texts), so one whose limit counted questions was measured with a fresh adapter."""
    return ref.get("shuffled_control") or (SHUFFLED if ref.get("limit_counts") == "texts" else FRESH)


def _unlike(res: Results, group: str, ref: dict) -> tuple[str, str]:
    """Why this run's ``group`` cannot be compared with the reference's: (on uav, on uav − shuffled), "" where it can.
    uav compares when both scored the same items: limits counted alike, or the group asks one question per text (N
    questions are then N texts). uav − shuffled compares when uav does and both used the same shuffled control."""
    theirs = ref.get("limit_counts", "questions")  # spreads saved before limits counted texts
    per_text = Counter(r["row"] for r in res.items if r.get("method") == "uav" and r.get("task") == group)
    items = ""
    if res.limit is not None and res.limit_counts != theirs and (not per_text or max(per_text.values()) > 1):
        items = (f"the reference's limit counted {theirs}, this run's {res.limit_counts}: it scored other {group} "
                 "texts (several questions per text)")
    control = shuffled_control(ref)
    diff = items or ("" if control == SHUFFLED else f"the reference's shuffled control was a {control}, this run's "
                                                    f"the {SHUFFLED}")
    return items, diff


def _inside(s: dict, v: float) -> str:
    return "yes" if s.get("min") is not None and s["min"] <= v <= s["max"] else "no"


def beside_reference(own: dict[str, Results], ref: dict | None, where: str) -> str:
    """This (one-seed) demo's uav − shuffled per run and task group next to the reference spread over seeds, each
    row compared only on what the reference measured alike (:func:`_unlike`), and saying why where it cannot be."""
    if ref is None:
        return f"no reference spread for this recipe ({where} does not exist)"
    if not ref.get("runs"):
        return f"reference spread ({where}): {ref.get('note') or 'not measured yet'}"
    lines = [f"This run beside the reference spread over {len(ref['seeds'])} seeds ({where}; {ref.get('command', '')}):",
             *_limit_note(own, ref), *(["", f"Note: {ref['note']}"] if ref.get("note") else []),
             "", "| run | task group | uav (this run) | uav − shuffled (this run) | reference uav | "
             "reference uav − shuffled | inside the reference range |", "|---|---|---|---|---|---|---|"]
    for name, res in own.items():
        for g, d in res.reading.get("by_task", {}).items():
            c = ref["runs"].get(name, {}).get(g)
            if not c or c["diff"].get("min") is None:
                inside = "–"
            else:
                items, diff = _unlike(res, g, ref)
                if items:
                    inside = f"not comparable: {items}"
                elif diff:
                    inside = f"uav: {_inside(c['uav'], d['uav'])}; uav − shuffled not comparable: {diff}"
                else:
                    inside = _inside(c["diff"], d["mean"])
            lines.append(f"| {name} | {g} | {d['uav']:.2f} | {d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] | "
                         f"{fmt(c['uav']) if c else '–'} | {fmt(c['diff'], signed=True) if c else '–'} | {inside} |")
    return "\n".join(lines)
