"""`make demo`: the whole job on the embedded models, driven by one recipe file.

data → harvest every donor → train every run → evaluate every run with controls → one comparison table.
Each step is resumable and a finished step is a no-op, so a re-run after an interruption picks up where it
stopped and a second `make demo` only re-prints the results.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

from rich.console import Console

from uav_cache.datasets import load_examples
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_eval.protocol import EvalConfig, evaluate
from uav_eval.report import compare, summary_table
from uav_train.trainer import TrainConfig, train


def load_recipe(path: Path) -> dict:
    if not Path(path).exists():
        raise UavError(f"recipe {path} not found", "pass a file from pipelines/recipes/")
    rec = tomllib.loads(Path(path).read_text())
    for key in ("donors", "runs"):
        if not rec.get(key):
            raise UavError(f"recipe {path} has no [[{key}]]", "see pipelines/recipes/demo.toml")
    return rec


def run_demo(recipe: Path, console: Console | None = None) -> str:
    """Run the recipe end to end; returns the comparison table (markdown)."""
    con = console or Console()
    rec = load_recipe(recipe)
    t0 = time.perf_counter()
    data = rec.get("data", {}).get("recipe", "demo")

    con.rule("[bold]1/4 data")
    ex = load_examples(data)
    con.print(f"{len(ex.examples)} examples from {data!r}: " + ", ".join(f"{k} {v}" for k, v in ex.split_sizes().items()))

    con.rule("[bold]2/4 harvest")
    for d in rec["donors"]:
        t = time.perf_counter()
        harvest(HarvestConfig(donor=d["name"], data=data, out=d["store"], **{k: v for k, v in d.items() if k not in ("name", "store")}))
        con.print(f"{d['name']} → {d['store']} ({time.perf_counter() - t:.0f} s)")

    con.rule("[bold]3/4 train")
    base = rec.get("train", {})
    for r in rec["runs"]:
        t = time.perf_counter()
        cfg = TrainConfig.from_dict({**base, **{k: v for k, v in r.items() if k != "name"}})
        train(cfg)
        con.print(f"{r['name']} → {cfg.out} ({time.perf_counter() - t:.0f} s)")

    con.rule("[bold]4/4 eval")
    ev = rec.get("eval", {})
    for i, r in enumerate(rec["runs"]):
        controls = ev.get("controls", []) if i == 0 else ev.get("controls_other", ev.get("controls", []))
        res = evaluate(EvalConfig(run=r["out"], limit=ev.get("limit"), methods=["uav", *controls]))
        con.print(f"[bold]{r['name']}[/bold]  ({res['donor']} → {res['decoder']}, {res['adapter']}, LoRA {res['lora']})")
        con.print(summary_table(res), markup=False, soft_wrap=True)

    out = Path(rec.get("compare_dir", "runs"))
    table = compare([r["out"] for r in rec["runs"]], out)
    con.rule("[bold]comparison")
    con.print(table, markup=False, soft_wrap=True)
    con.print(f"reports: {', '.join(str(Path(r['out']) / 'report.md') for r in rec['runs'])}; "
              f"comparison: {out / 'compare.md'} and {out / 'compare.png'}  ({(time.perf_counter() - t0) / 60:.1f} min)")
    return table
