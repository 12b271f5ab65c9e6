"""`make demo`: the whole job on the embedded models, driven by one recipe file.

data → harvest every donor → train every run → evaluate every run with controls → one comparison table.
Each step is resumable and a finished step is a no-op (an evaluation is redone only when its settings or the
run's weights changed), so a re-run after an interruption picks up where it stopped and a second `make demo`
only re-prints the results.

Seeds: a recipe's top-level ``seeds = N`` (or ``uav demo --seeds N``) trains and evaluates every run N times, with
the [train] seed + 0 … N-1. Seed 0 is the run's own ``out`` (so a one-seed demo is seed 0 of the spread); seed k ≥ 1
is ``<out>-seed<k>`` (runs/self-seed1, …), and a ``frozen_decoder`` or ``init_from`` naming another run of the recipe
takes that run's folder of the same seed. With N ≥ 2 the demo writes ``<compare_dir>/seeds.json|md``: mean ± spread per
headline number (uav_eval.spread). A one-seed demo prints its numbers beside the reference spread saved for its
recipe, docs/results/<recipe>-spread.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from uav_cache.config import from_table, read_recipe, refuse_unknown
from uav_cache.examples import load_examples
from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_eval.methods import CONTROLS
from uav_eval.protocol import SETTINGS, EvalConfig, evaluate, settings
from uav_eval.report import compare, summary_table, write_report
from uav_eval.results import Results, legacy_location, location, suffix, tag
from uav_eval.spread import beside_reference, load_reference, summarise, table as spread_table
from uav_train.run import RunRecord
from uav_train.trainer import RECIPE_SECTIONS, TrainConfig, train


SECTIONS = {"data": {"recipe"},
            "eval": {"limit", "controls", "controls_other", "compare_dir", "data", "data_runs"}}
REFERENCES = Path(__file__).resolve().parent.parent / "docs" / "results"  # <recipe>-spread.json: the seed spreads


def seed_out(out: str, k: int) -> str:
    """Where seed k of a run lands: the run's own folder for k = 0, ``<out>-seed<k>`` beside it otherwise."""
    return out if k == 0 else f"{out.rstrip('/')}-seed{k}"


def seed_runs(rec: dict, k: int) -> list[tuple[str, TrainConfig]]:
    """Every [[runs]] entry as seed k: its own folder, the [train] seed + k, and a frozen_decoder or init_from that
    names another run of the recipe moved to that run's seed-k folder."""
    outs = {r["out"] for r in rec["runs"]}
    out = []
    for r in rec["runs"]:
        cfg = run_config(rec, r)
        same_seed = lambda other: seed_out(other, k) if other in outs else other  # noqa: E731
        cfg = replace(cfg, out=seed_out(cfg.out, k), seed=cfg.seed + k, frozen_decoder=same_seed(cfg.frozen_decoder),
                      init_from=same_seed(cfg.init_from))
        out.append((r["name"], cfg))
    return out


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


def eval_config(rec: dict, i: int, path: Path, k: int = 0) -> EvalConfig:
    """The evaluation of the i-th run (seed k): the [eval] limit, and its controls (the first run's, or the
    others')."""
    ev, out = rec.get("eval", {}), seed_out(rec["runs"][i]["out"], k)
    controls = ev.get("controls", []) if i == 0 else ev.get("controls_other", ev.get("controls", []))
    return from_table(EvalConfig, {"limit": ev.get("limit"), "methods": ["uav", *controls]},
                      f"[eval] of recipe {path}", run=out)


def load_recipe(path: Path) -> dict:
    """Read and check a recipe: every section and key is known, and there are donors and runs."""
    return check_recipe(read_recipe(Path(path)), Path(path))


def check_recipe(rec: dict, path: Path) -> dict:
    """:func:`load_recipe`'s checks on a recipe already read (``path`` names it in messages)."""
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
    names = [r["name"] for r in rec["runs"]]
    runs = ev.get("data_runs", names)
    if not isinstance(runs, list) or set(runs) - set(names):
        raise UavError(f"recipe {path} [eval]: data_runs = {runs!r} names no run of the recipe",
                       f"use any of {', '.join(names)}, or leave it out (every run)")
    for key in ("controls", "controls_other"):
        if not isinstance(ev.get(key, []), list) or set(ev.get(key, [])) - set(CONTROLS):
            raise UavError(f"recipe {path} [eval]: {key} = {ev[key]!r} is not a list of controls",
                           f"use any of {', '.join(CONTROLS)}")
    for i in range(len(rec["runs"])):  # the limit's type
        eval_config(rec, i, path)
    if ev.get("limit") is not None and ev["limit"] < 1:
        raise UavError(f"recipe {path} [eval]: limit must be ≥ 1, got {ev['limit']}",
                       "leave it out to evaluate every item")
    seeds = rec.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UavError(f"recipe {path}: seeds = {seeds!r} must be an integer ≥ 1", "e.g. seeds = 3, or leave it out (1)")
    return rec


def _current_results(cfg: EvalConfig, say=print) -> Results | None:
    """The evaluation's results when they were made with these settings after the run's weights were last written:
    at their key (results.location and the settings' suffix), or where they landed before the split "all" and the
    settings were part of the key, then moved to their key (``say`` tells). None: evaluate (again)."""
    run = Path(cfg.run)
    own, dataset, fp = True, None, None
    if cfg.data is not None:
        ex = load_examples(cfg.data)
        rec = RunRecord.of(run)
        own = rec is not None and rec.trained_on(ex.fingerprint)
        dataset, fp = ex.name, ex.fingerprint
    where = dict(dataset=dataset, fingerprint=fp, split=cfg.split or ("test" if own else "all"), own=own)
    mine, weights = settings(cfg), run / "adapter.safetensors"
    for p in dict.fromkeys((location(run, **where) / f"results{suffix(cfg.limit, tag(mine))}.json",
                            legacy_location(run, **where) / f"results{suffix(cfg.limit)}.json")):
        if not p.exists() or not weights.exists() or p.stat().st_mtime < weights.stat().st_mtime:
            continue
        res = Results.load(p)
        # results without limit_counts "texts" were made with limits counting questions and a shuffled control
        # through a random adapter: evaluated again, as are results made with any other setting
        if res.limit_counts != "texts" or any(res.config.get(k) != getattr(cfg, k) for k in
                                              ("limit", "split", "store", "data", *SETTINGS)):
            say(f"{p} was made with other settings: evaluating again")
            continue
        res.settings = mine  # results written before the settings named the files do not list them
        if res.file() != p:
            write_report(res, res.folder())
            for kind, ext in (("results", "json"), ("report", "md"), ("eval_tasks", "png")):
                (p.parent / f"{kind}{suffix(cfg.limit)}.{ext}").unlink(missing_ok=True)
            say(f"{p} is this evaluation: moved to {res.file()} (the name its settings give it)")
        return res
    return None


def run_demo(recipe: Path, console: Console | None = None, seeds: int | None = None) -> str:
    """Run the recipe end to end (``seeds`` overrides the recipe's); returns the comparison table (markdown)."""
    con = console or Console()
    rec = load_recipe(recipe)
    if seeds is not None:
        rec = check_recipe({**rec, "seeds": seeds}, Path(recipe))
    n_seeds = rec.get("seeds", 1)
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

    con.rule("[bold]3/4 train" + (f" ({n_seeds} seeds)" if n_seeds > 1 else ""))
    for k in range(n_seeds):  # seed 0 of every run first: a stopped multi-seed demo has the one-seed result
        for name, cfg in seed_runs(rec, k):
            t = time.perf_counter()
            train(cfg)
            con.print(f"{name} → {cfg.out} ({time.perf_counter() - t:.0f} s)")

    con.rule("[bold]4/4 eval")
    say = lambda line: con.print(line, markup=False, soft_wrap=True)  # noqa: E731 - paths may hold [ ]
    ev = rec.get("eval", {})
    by_seed: dict[str, list[Results]] = {r["name"]: [] for r in rec["runs"]}
    for k in range(n_seeds):
        for i, r in enumerate(rec["runs"]):
            cfg, t = eval_config(rec, i, recipe, k), time.perf_counter()
            res = _current_results(cfg, say) or evaluate(cfg)
            by_seed[r["name"]].append(res)
            con.print(f"[bold]{r['name']}[/bold]{f' seed {k}' if n_seeds > 1 else ''}  ({res.donor} → {res.decoder}, "
                      f"{res.adapter}, LoRA {res.lora or 'none'}; {time.perf_counter() - t:.0f} s)")
            con.print(summary_table(res), markup=False, soft_wrap=True)

    for data in ev.get("data", []):  # evaluation sets no run trained or was tuned on (e.g. pipelines/evalsets/)
        con.rule(f"[bold]eval on {data}")
        for i, r in enumerate(rec["runs"]):
            if r["name"] not in ev.get("data_runs", [r["name"]]):
                continue
            cfg, t = replace(eval_config(rec, i, recipe), data=data, limit=None), time.perf_counter()
            res = _current_results(cfg, say) or evaluate(cfg)
            con.print(f"[bold]{r['name']}[/bold] on {res.dataset} ({res.n_items} items) → {res.folder()} "
                      f"({time.perf_counter() - t:.0f} s)")
            con.print(summary_table(res), markup=False, soft_wrap=True)

    out = Path(ev.get("compare_dir", "runs"))
    own = [by_seed[r["name"]][0] for r in rec["runs"]]  # seed 0: each run's own folder
    table = compare([res.file() for res in own], out)
    con.rule("[bold]comparison")
    con.print(table, markup=False, soft_wrap=True)
    ref_path = REFERENCES / f"{Path(recipe).stem}-spread.json"
    if n_seeds > 1:
        base = run_config(rec, rec["runs"][0]).seed
        summary = summarise(by_seed, [base + k for k in range(n_seeds)],
                            command=f"uav demo --recipe {recipe} --seeds {n_seeds}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "seeds.json").write_text(json.dumps(summary, indent=1))
        (out / "seeds.md").write_text(f"# {Path(recipe).stem}: spread over seeds\n\n{spread_table(summary)}\n")
        con.rule("[bold]spread over seeds")
        con.print(spread_table(summary), markup=False, soft_wrap=True)
        con.print(f"spread: {out / 'seeds.md'}, {out / 'seeds.json'} (copy it to {ref_path} to make it the reference)")
    else:
        con.rule("[bold]this run beside the reference spread")
        con.print(beside_reference({n: v[0] for n, v in by_seed.items()}, load_reference(ref_path),
                                   str(ref_path.relative_to(REFERENCES.parent.parent))), markup=False, soft_wrap=True)
    con.print(f"reports: {', '.join(str(res.file('report', 'md')) for res in own)}; "
              f"comparison: {out / 'compare.md'} and {out / 'compare.png'}  ({(time.perf_counter() - t0) / 60:.1f} min)")
    return table
