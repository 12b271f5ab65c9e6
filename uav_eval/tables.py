"""The cells of a results table: one aggregate with its 95% interval, parameter counts, markdown-safe cells and
tables, and which task groups and methods a result holds. The report, the model card and the run comparison
(report.py) read results through these, so a number is shown the same way in each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from uav_cache.examples import TASKS
from uav_eval.methods import METHODS
from uav_eval.results import Results

TEXT_MAX = 120  # characters per sample cell

Stat = dict[str, float]


def num(x: Any) -> float:
    """None (NaN after a JSON round trip) and missing values both read as NaN."""
    return math.nan if x is None else float(x)


def stat(results: Results, method: str, group: str, metric: str = "f1", by: str = "by_task") -> Stat:
    """One aggregate cell; an absent method/group/metric is all-NaN so tables and plots just show a gap."""
    s = results.aggregates.get(by, {}).get(f"{method}/{group}", {}).get(metric)
    if not s:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    return {"mean": num(s.get("mean")), "lo": num(s.get("lo")), "hi": num(s.get("hi")), "n": int(s.get("n") or 0)}


def ci(s: Stat) -> str:
    """`0.83 [0.78, 0.88]`, or an en dash when there is nothing to show."""
    if math.isnan(s["mean"]):
        return "–"
    return f"{s['mean']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"


def diff_cell(d: dict | None, bold_above_zero: bool = False) -> str:
    """A paired difference with its 95% interval, `+0.41 [+0.30, +0.52]` (bold where the interval is above 0, when
    asked), or an en dash."""
    if not d or d.get("mean") is None or math.isnan(num(d.get("mean"))):
        return "–"
    out = f"{num(d['mean']):+.2f} [{num(d['lo']):+.2f}, {num(d['hi']):+.2f}]"
    return f"**{out}**" if bold_above_zero and num(d["lo"]) > 0 else out


def fmt_params(n: int | None) -> str:
    """Compact parameter count: 577, 12.3K, 5.3M, 1.2B (0 stays 0: a frozen part is worth stating)."""
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def params_of(results: Results) -> str:
    """Trainable parameters of a run: adapter / LoRA."""
    tp = results.trainable_params
    return f"{fmt_params(tp.get('adapter'))} / {fmt_params(tp.get('lora'))}"


def cell(text: Any, limit: int = TEXT_MAX) -> str:
    """Markdown-safe table cell: one line, `|` escaped, truncated so a long gist doesn't wreck the table."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s.replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (cells already made safe with :func:`cell`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ordered(names: set[str], order: tuple[str, ...]) -> list[str]:
    """``names`` in ``order`` first, then the others sorted."""
    return [n for n in order if n in names] + sorted(names - set(order))


def groups_of(results: Results, by: str = "by_task") -> list[str]:
    """Groups present in the aggregates (known task order first), without "overall"."""
    keys = results.aggregates.get(by, {})
    names = {k.split("/", 1)[1] for k in keys if "/" in k} - {"overall"}
    return ordered(names, TASKS)


def methods_of(results: Results) -> list[str]:
    """Methods that actually have aggregates, in results["methods"] order (uav first)."""
    keys = results.aggregates.get("by_task", {})
    present = {k.split("/", 1)[0] for k in keys}
    listed = [m for m in results.methods if m in present]
    return listed + ordered(present - set(listed), tuple(METHODS))


def run_name(results: Results) -> str:
    """The run folder's name."""
    return Path(results.run or "run").name or results.run


def short_name(model: Any) -> str:
    """Last path component of a model id/path, for plot labels."""
    return Path(str(model)).name or str(model)
