"""`make demo`: the whole job on the embedded models, driven by one recipe file.

data → harvest every donor → train every run → evaluate every run with controls → one comparison table.
Each step is resumable and a finished step is a no-op (an evaluation is redone only when its settings or the
run's weights changed), so a re-run after an interruption picks up where it stopped and a second `make demo`
only re-prints the results.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from uav_cache.config import from_table, read_recipe, refuse_unknown
from uav_cache.examples import load_examples
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_eval.methods import CONTROLS
from uav_eval.protocol import EvalConfig, evaluate
from uav_eval.report import compare, summary_table
from uav_eval.results import Results, location, suffix
from uav_train.trainer import RECIPE_SECTIONS, TrainConfig, train


SECTIONS = {"data": {"recipe"}, "eval": {"limit", "controls", "controls_other", "compare_dir", "data"}}


def donor_config(rec: dict, donor: dict, path: Path) -> HarvestConfig:
    """One [[donors]] entry: its name and store, and any HarvestConfig field but donor, data and out."""
    if not {"name", "store"} <= set(donor):
        raise UavError(f"recipe {path}: a [[donors]] entry lacks name or store", "give each donor both")
    table = {k: v for k, v in donor.items() if k not in ("name", "store")}
    return from_table(HarvestConfig, table, f"[[donors]] {donor['name']} of recipe {path}", donor=donor["name"],
                      data=rec.get("data", {}).get("recipe", "demo"), out=donor["store"])


def run_config(rec: dict, run: dict) -> TrainConfig:
    """One [[runs]] entry over the recipe's [train] defaults."""
    return TrainConfig.from_dict({**rec.get("train", {}), **{k: v for k, v in run.items() if k != "name"}})


def eval_config(rec: dict, i: int, path: Path) -> EvalConfig:
    """The evaluation of the i-th run: the [eval] limit, and its controls (the first run's, or the others')."""
    ev, out = rec.get("eval", {}), rec["runs"][i]["out"]
    controls = ev.get("controls", []) if i == 0 else ev.get("controls_other", ev.get("controls", []))
    return from_table(EvalConfig, {"limit": ev.get("limit"), "methods": ["uav", *controls]},
                      f"[eval] of recipe {path}", run=out)


def load_recipe(path: Path) -> dict:
    """Read and check a recipe: every section and key is known, and there are donors and runs."""
    path = Path(path)
    rec = read_recipe(path)
    refuse_unknown(rec, RECIPE_SECTIONS, "key", f"the top level of recipe {path}")
    for key in ("donors", "runs"):
        if not rec.get(key):
            raise UavError(f"recipe {path} has no [[{key}]]", "see pipelines/recipes/demo.toml")
    for section, valid in SECTIONS.items():
        refuse_unknown(rec.get(section, {}), valid, "key", f"[{section}] of recipe {path}")
    for d in rec["donors"]:
        donor_config(rec, d, path)
    for r in rec["runs"]:  # training keys are checked by TrainConfig.from_dict before anything runs
        if not {"name", "out"} <= set(r):
            raise UavError(f"recipe {path}: a [[runs]] entry lacks name or out", "give each run both")
        run_config(rec, r)
    outs = [r["out"] for r in rec["runs"]]
    if len(set(outs)) != len(outs):
        raise UavError(f"recipe {path}: two runs share an out folder", "give each run its own out")
    ev = rec.get("eval", {})
    if not isinstance(ev.get("data", []), list) or not all(isinstance(d, str) for d in ev.get("data", [])):
        raise UavError(f"recipe {path} [eval]: data = {ev['data']!r} is not a list of dataset files",
                       'e.g. data = ["pipelines/evalsets/new_entities.jsonl"]')
    for key in ("controls", "controls_other"):
        if not isinstance(ev.get(key, []), list) or set(ev.get(key, [])) - set(CONTROLS):
            raise UavError(f"recipe {path} [eval]: {key} = {ev[key]!r} is not a list of controls",
                           f"use any of {', '.join(CONTROLS)}")
    for i in range(len(rec["runs"])):  # the limit's type
        eval_config(rec, i, path)
    if ev.get("limit") is not None and ev["limit"] < 1:
        raise UavError(f"recipe {path} [eval]: limit must be ≥ 1, got {ev['limit']}",
                       "leave it out to evaluate every item")
    return rec


def _current_results(cfg: EvalConfig) -> Results | None:
    """The evaluation's results.json when it was made with these settings after the run's weights were last written
    (for a --data file: in the folder that dataset's results go to)."""
    run = Path(cfg.run)
    folder = run
    if cfg.data is not None:
        ex = load_examples(cfg.data)
        folder = location(run, dataset=ex.name, fingerprint=ex.fingerprint, split=cfg.split or "all", own=False)
    p, weights = folder / f"results{suffix(cfg.limit)}.json", run / "adapter.safetensors"
    if not p.exists() or not weights.exists() or p.stat().st_mtime < weights.stat().st_mtime:
        return None
    res = Results.load(p)
    same = {k: res.config.get(k) == getattr(cfg, k) for k in ("limit", "methods", "split", "store", "data")}
    return res if all(same.values()) else None


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
        harvest(donor_config(rec, d, recipe))
        con.print(f"{d['name']} → {d['store']} ({time.perf_counter() - t:.0f} s)")

    con.rule("[bold]3/4 train")
    for r in rec["runs"]:
        t = time.perf_counter()
        cfg = run_config(rec, r)
        train(cfg)
        con.print(f"{r['name']} → {cfg.out} ({time.perf_counter() - t:.0f} s)")

    con.rule("[bold]4/4 eval")
    ev = rec.get("eval", {})
    for i, r in enumerate(rec["runs"]):
        cfg = eval_config(rec, i, recipe)
        res = _current_results(cfg) or evaluate(cfg)
        con.print(f"[bold]{r['name']}[/bold]  ({res.donor} → {res.decoder}, {res.adapter}, LoRA {res.lora or 'none'})")
        con.print(summary_table(res), markup=False, soft_wrap=True)

    for data in ev.get("data", []):  # evaluation sets no run trained or was tuned on (e.g. pipelines/evalsets/)
        con.rule(f"[bold]eval on {data}")
        for i, r in enumerate(rec["runs"]):
            cfg = replace(eval_config(rec, i, recipe), data=data, limit=None)
            res = _current_results(cfg) or evaluate(cfg)
            con.print(f"[bold]{r['name']}[/bold] on {res.dataset} ({res.n_items} items) → {res.folder()}")
            con.print(summary_table(res), markup=False, soft_wrap=True)

    out = Path(ev.get("compare_dir", "runs"))
    sx = suffix(ev.get("limit"))
    table = compare([Path(r["out"]) / f"results{sx}.json" for r in rec["runs"]], out)
    con.rule("[bold]comparison")
    con.print(table, markup=False, soft_wrap=True)
    con.print(f"reports: {', '.join(str(Path(r['out']) / f'report{sx}.md') for r in rec['runs'])}; "
              f"comparison: {out / 'compare.md'} and {out / 'compare.png'}  ({(time.perf_counter() - t0) / 60:.1f} min)")
    return table
