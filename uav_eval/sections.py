"""The report's sections beyond the main reading table: questions of a kind the run never trained on, whether a
confident answer is a right one, and what the run names from positions that do not state it (privileged
information). Each takes a :class:`Results` and returns markdown lines (none when the evaluation has nothing for
it); torch-free, like report.py.
"""

from __future__ import annotations

import math

from uav_eval.results import Results
from uav_eval.tables import cell, diff_cell, md_table, num, stat


def generalization_section(results: Results) -> list[str]:
    """Rows: each task group on the datasets and phrasings the run trained on, on new phrasings of those datasets,
    and on datasets it never trained on; uav, shuffled, their paired difference, no_soft and (yes/no) the share of
    answers that are a plain yes or no."""
    gen = results.reading.get("by_generalization")
    if not gen:
        return []
    rows = []
    for key, d in gen.items():
        task, where = key.split(" · ", 1)
        m = d["metric"]
        ns = stat(results, "no_soft", key, m, by="by_generalization")
        clean = stat(results, "uav", key, "clean", by="by_generalization")
        rows.append([task, where, m, str(d["n"]), f"{d['uav']:.2f}", f"{d['shuffled']:.2f}", diff_cell(d),
                     "**yes**" if d["reads"] else "no", "–" if math.isnan(ns["mean"]) else f"{ns['mean']:.2f}",
                     "–" if not clean["n"] else f"{clean['mean']:.2f}"])
    return ["", "## Questions it was never trained on", "",
            "The same run on the datasets and question phrasings it trained on, on held-out phrasings of those datasets, "
            "and on datasets it never trained on (a run trained without yes/no questions, `yesno = 0`: every yes/no "
            "question is \"yes/no never trained\"). Yes/no questions are scored by their leading yes or no (`acc`); "
            "`clean` is the share of uav answers that are a plain yes or no.", "",
            md_table(["task group", "where", "metric", "n", "uav", "shuffled", "uav − shuffled [95% CI]", "reads",
                       "no_soft", "clean"], rows)]


def calibration_section(results: Results) -> list[str]:
    """Does a high score (log p of the answer with the true activation − with the shuffled one) predict a right
    answer? Per task group: correctness in each third of the answers by score, and the rank correlation."""
    cal = results.calibration
    if not cal:
        return []
    rows = []
    for task, c in cal.items():
        m = c["metric"]
        bins = " · ".join(f"{b[m]:.2f} (score {b['mean_score']:+.2f}, n {b['n']})" for b in c["bins"])
        rho = c.get("spearman")
        rows.append([task, m, str(c["n"]), bins, "–" if rho is None or math.isnan(num(rho)) else f"{num(rho):+.2f}"])
    return ["", "## Is a confident answer a right one?", "",
            "Each uav answer's score is its mean log-probability per token given the true activation minus given the "
            "shuffled one (nats): near 0, the answer does not depend on the activation. The answers are split into "
            "thirds by score, low to high; a score that predicts correctness rises across the thirds.", "",
            md_table(["task group", "metric", "n", "correctness by score third (low → high)", "Spearman ρ"], rows)]


def privileged_section(results: Results, plot_name: str | None = None) -> list[str]:
    """What the run names from the later positions of texts with a ``shown_from`` (uav_eval.privileged), beside the
    same words read alone, another item's view, the whole text, and the probe per block (with ``plot_name``, the
    figure of the same, uav_eval.plots.plot_privileged)."""
    pv = results.privileged
    if not pv.get("by_source"):
        return []
    probe = pv.get("probe", {})
    layers = sorted({lay for p in probe.values() for lay in p["by_layer"]}, key=lambda x: (len(x), x))
    num_ = lambda d, k: f"{d[k]:.2f}" if k in d else "–"  # noqa: E731
    rows = [[cell(src), str(d["n"]), num_(d, "whole"), num_(d, "view"), num_(d, "alone"), num_(d, "shuffled"),
             diff_cell(d.get("gain"), True), diff_cell(d.get("vs_shuffled"), True),
             *[f"{probe[src]['by_layer'][lay]:.2f}" if src in probe and lay in probe[src]["by_layer"] else "–"
               for lay in layers]] for src, d in pv["by_source"].items()]
    how = {p["method"] for p in probe.values()}
    return ["", "## Privileged information: what the donor carried past the words shown", "",
            "Texts with a `shown_from`: the donor reads the whole text; the run is shown only the positions from that "
            "character on (their token vectors in context"
            + (", and the read-out pooled over them" if pv.get("read_out_pooled_over_view") else
               "; the store keeps no token vectors of the pooled layers, so no read-out") + "). "
            "`alone`: the same later words read by the donor without the earlier part (what the words themselves "
            "say); `shuffled`: another item's view. Scored by whether the answer names the gold one "
            f"(`{pv.get('metric', 'mention')}`). The privileged gain is view − alone (paired 95% interval); bold "
            "where it is above 0."
            + (f" Probe: a logistic regression on the mean of the same positions per block ({', '.join(sorted(how))})"
               "; chance 1/classes; cross-validation folds are split by the words shown, so a fold never fits on the "
               "words it scores." if probe else ""),
            "", md_table(["source", "n", "whole text", "view (in context)", "alone", "shuffled", "gain: view − alone",
                          "view − shuffled", *[f"probe {lay}" for lay in layers]], rows),
            *(["", f"![probe per block and what the run names from the view]({plot_name})"] if plot_name else [])]
