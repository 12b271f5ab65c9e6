"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global pyplot state), from Results only.

- ``plot_tasks``: one run, token F1 per task group and method;
- ``plot_compare``: several runs, each one's uav beside its shuffled and no_soft controls;
- ``plot_privileged``: what a run names from the positions after an entity, beside the same words read alone, and
  the probe of the same positions per block: where in the donor the answer appears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uav_cache.examples import TASKS
from uav_cache.models import block_index
from uav_eval.methods import READING_METRIC
from uav_eval.results import Results
from uav_eval.tables import Stat, groups_of, methods_of, ordered, params_of, run_name, short_name, stat

DPI = 110


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _err(stats: list[Stat]) -> list[list[float]]:
    """Asymmetric error bars from CIs; NaN stays NaN (matplotlib draws nothing)."""
    return [[s["mean"] - s["lo"] for s in stats], [s["hi"] - s["mean"] for s in stats]]


def plot_tasks(results: Results, path: Path) -> None:
    """Grouped bars: x = task group (+ overall), one bar per method, token F1 mean with 95% CI."""
    groups, methods = groups_of(results) + ["overall"], methods_of(results)
    fig = _figure(max(6.0, 1.1 * len(groups) * max(1, len(methods)) * 0.35 + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        stats = [stat(results, m, g) for g in groups]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [s["mean"] for s in stats], width, yerr=_err(stats), capsize=2, label=m,
               hatch="//" if m == "no_soft" else None, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("token F1 (mean, 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{run_name(results)}: {short_name(results.donor)} → {short_name(results.decoder)}, "
                 f"{results.adapter}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=max(1, len(methods)), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _run_label(results: Results, name: str) -> str:
    return (f"{name} ({short_name(results.donor)}→{short_name(results.decoder)}, {results.adapter}, "
            f"{params_of(results)})")


def plot_compare(runs: list[tuple[str, Results]], path: Path) -> None:
    """Per task group, each run's uav F1 (coloured) next to its own no_soft (grey, hatched) for reference."""
    groups = ordered({g for _, r in runs for g in groups_of(r)}, TASKS) + ["overall"]
    fig = _figure(max(7.0, 1.6 * len(groups) * max(1, len(runs)) * 0.5 + 3), 4.6)
    ax = fig.add_subplot()
    slot = 0.8 / max(1, len(runs))
    colors = [f"C{i % 10}" for i in range(len(runs))]
    metric = lambda g: READING_METRIC.get(g, "f1")  # noqa: E731
    for i, (name, res) in enumerate(runs):
        base = [j + (i - (len(runs) - 1) / 2) * slot for j in range(len(groups))]
        u = [stat(res, "uav", g, metric(g)) for g in groups]
        sh = [stat(res, "shuffled", g, metric(g)) for g in groups]
        ns = [stat(res, "no_soft", g, metric(g)) for g in groups]
        ax.bar([x - slot * 0.25 for x in base], [s["mean"] for s in u], slot * 0.45, yerr=_err(u), capsize=2,
               color=colors[i], edgecolor="black", linewidth=0.4, label=_run_label(res, name))
        ax.bar([x + slot * 0.1 for x in base], [s["mean"] for s in sh], slot * 0.25, yerr=_err(sh), capsize=1,
               color=colors[i], alpha=0.35, edgecolor="0.3", linewidth=0.4,
               label="shuffled (same run, another item's activation)" if i == 0 else None)
        ax.bar([x + slot * 0.35 for x in base], [s["mean"] for s in ns], slot * 0.2, yerr=_err(ns), capsize=1,
               color="0.85", hatch="//", edgecolor="0.4", linewidth=0.4,
               label="no_soft (each run's decoder, question only)" if i == 0 else None)
    ax.set_xticks(range(len(groups)), [f"{g}\n({metric(g) if g != 'overall' else 'f1'})" for g in groups])
    ax.set_ylabel("mean, 95% CI")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{len(runs)} runs: uav (solid) vs its shuffled control (pale) and no_soft (hatched)")
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(("shuffled", "no_soft")))  # references last
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_privileged(results: Results, path: Path) -> bool:
    """Left: per source, a linear probe's accuracy at naming the answer from the view's pooled states, block by
    block (chance dashed), with the run's read blocks marked. Right: how often the run names it from the whole text,
    from the view in context, from the same words alone, and from another item's view. False (nothing drawn) when
    the results hold no privileged evaluation."""
    pv = results.privileged
    by_source = pv.get("by_source") or {}
    if not by_source:
        return False
    probe = pv.get("probe") or {}
    fig = _figure(11.0, 4.2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (src, p) in enumerate(sorted(probe.items())):
        pts = sorted((b, acc) for lay, acc in p["by_layer"].items() if (b := block_index(lay)) is not None)
        left.plot([b for b, _ in pts], [a for _, a in pts], marker="o", color=f"C{i % 10}", label=src)
        left.axhline(p["chance"], color=f"C{i % 10}", linestyle=":", linewidth=0.8)
    read = [b for lay in results.layers if (b := block_index(lay)) is not None]
    for k, b in enumerate(read):
        left.axvline(b, color="0.4", linestyle="--", linewidth=0.8, label="the run's read-out block" if k == 0 else None)
    left.set_xlabel("donor block")
    left.set_ylabel("probe accuracy (dotted: chance)")
    left.set_ylim(0, 1.05)
    left.set_title("where the answer is: a linear probe of the view" if probe else "no probe (token vectors not stored)")
    left.grid(alpha=0.3)
    if probe:
        left.legend(fontsize=7, loc="upper left")
    sources = list(by_source)
    cols = [("whole", "whole text", "0.75", None), ("view", "view (in context)", "C0", None),
            ("alone", "the same words alone", "C1", "//"), ("shuffled", "another item's view", "0.85", None)]
    width = 0.8 / len(cols)
    for j, (key, label, color, hatch) in enumerate(cols):
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(sources))]
        right.bar(xs, [by_source[s].get(key, float("nan")) for s in sources], width, color=color, hatch=hatch,
                  edgecolor="black", linewidth=0.4, label=label)
    right.set_xticks(range(len(sources)), sources, fontsize=8)
    right.set_ylabel(f"answer named ({pv.get('metric', 'mention')})")
    right.set_ylim(0, 1.05)
    right.set_title(f"{run_name(results)}: what it names from the view")
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=7, loc="upper right")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return True
