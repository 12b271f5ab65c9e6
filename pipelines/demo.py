"""`make demo`: the whole job on the embedded models, driven by one recipe file.

data → harvest every donor → train every run → evaluate every run with controls → one comparison table.
Each step is resumable and a finished step is a no-op (an evaluation is redone only when its settings or the
run's weights changed), so a re-run after an interruption picks up where it stopped and a second `make demo`
only re-prints the results.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import fields
from pathlib import Path

from rich.console import Console

from uav_cache.config import check_types
from uav_cache.datasets import load_examples
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_eval.methods import CONTROLS
from uav_eval.protocol import EvalConfig, evaluate
from uav_eval.report import compare, summary_table
from uav_eval.results import Results, suffix
from uav_train.trainer import RECIPE_SECTIONS, TrainConfig, train


SECTIONS = {"data": {"recipe"}, "eval": {"limit", "controls", "controls_other", "compare_dir"}}
DONOR_KEYS = {"name", "store"} | {f.name for f in fields(HarvestConfig)} - {"donor", "data", "out"}


def _refuse_unknown(path: Path, where: str, keys: set[str], valid: set[str]) -> None:
    """A misspelt key would otherwise be ignored silently and the recipe would run with a default."""
    if bad := sorted(keys - valid):
        raise UavError(f"recipe {path}: unknown key(s) {bad} in {where}", f"valid keys there: {sorted(valid)}")


def run_config(rec: dict, run: dict) -> TrainConfig:
    """One [[runs]] entry over the recipe's [train] defaults."""
    return TrainConfig.from_dict({**rec.get("train", {}), **{k: v for k, v in run.items() if k != "name"}})


def load_recipe(path: Path) -> dict:
    """Read and check a recipe: every section and key is known, and there are donors and runs."""
    path = Path(path)
    if not path.exists():
        raise UavError(f"recipe {path} not found", "pass a file from pipelines/recipes/")
    try:
        rec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UavError(f"recipe {path} is not valid TOML: {e}", "fix the line it names") from e
    _refuse_unknown(path, "the top level", set(rec), set(RECIPE_SECTIONS))
    for key in ("donors", "runs"):
        if not rec.get(key):
            raise UavError(f"recipe {path} has no [[{key}]]", "see pipelines/recipes/demo.toml")
    for section, valid in SECTIONS.items():
        _refuse_unknown(path, f"[{section}]", set(rec.get(section, {})), valid)
    for d in rec["donors"]:
        _refuse_unknown(path, f"[[donors]] {d.get('name', '?')}", set(d), DONOR_KEYS)
        check_types(HarvestConfig, d, f"recipe {path} [[donors]] {d.get('name', '?')}")
        if not {"name", "store"} <= set(d):
            raise UavError(f"recipe {path}: a [[donors]] entry lacks name or store", "give each donor both")
    for r in rec["runs"]:  # training keys are checked by TrainConfig.from_dict before anything runs
        if not {"name", "out"} <= set(r):
            raise UavError(f"recipe {path}: a [[runs]] entry lacks name or out", "give each run both")
        run_config(rec, r)
    outs = [r["out"] for r in rec["runs"]]
    if len(set(outs)) != len(outs):
        raise UavError(f"recipe {path}: two runs share an out folder", "give each run its own out")
    ev = rec.get("eval", {})
    check_types(EvalConfig, {"limit": ev.get("limit")}, f"recipe {path} [eval]")
    if ev.get("limit") is not None and ev["limit"] < 1:
        raise UavError(f"recipe {path} [eval]: limit must be ≥ 1, got {ev['limit']}",
                       "leave it out to evaluate every item")
    for key in ("controls", "controls_other"):
        if not isinstance(ev.get(key, []), list) or set(ev.get(key, [])) - set(CONTROLS):
            raise UavError(f"recipe {path} [eval]: {key} = {ev[key]!r} is not a list of controls",
                           f"use any of {', '.join(CONTROLS)}")
    return rec


def _current_results(cfg: EvalConfig) -> Results | None:
    """The run's results.json when it was made with these settings after the run's weights were last written."""
    run = Path(cfg.run)
    p, weights = run / f"results{suffix(cfg.limit)}.json", run / "adapter.safetensors"
    if not p.exists() or not weights.exists() or p.stat().st_mtime < weights.stat().st_mtime:
        return None
    res = Results.load(p)
    same = {k: res.config.get(k) == getattr(cfg, k) for k in ("limit", "methods", "split", "store")}
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
        harvest(HarvestConfig(donor=d["name"], data=data, out=d["store"], **{k: v for k, v in d.items() if k not in ("name", "store")}))
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
        controls = ev.get("controls", []) if i == 0 else ev.get("controls_other", ev.get("controls", []))
        cfg = EvalConfig(run=r["out"], limit=ev.get("limit"), methods=["uav", *controls])
        res = _current_results(cfg) or evaluate(cfg)
        con.print(f"[bold]{r['name']}[/bold]  ({res.donor} → {res.decoder}, {res.adapter}, LoRA {res.lora or 'none'})")
        con.print(summary_table(res), markup=False, soft_wrap=True)

    out = Path(ev.get("compare_dir", "runs"))
    sx = suffix(ev.get("limit"))
    table = compare([Path(r["out"]) / f"results{sx}.json" for r in rec["runs"]], out)
    con.rule("[bold]comparison")
    con.print(table, markup=False, soft_wrap=True)
    con.print(f"reports: {', '.join(str(Path(r['out']) / f'report{sx}.md') for r in rec['runs'])}; "
              f"comparison: {out / 'compare.md'} and {out / 'compare.png'}  ({(time.perf_counter() - t0) / 60:.1f} min)")
    return table
