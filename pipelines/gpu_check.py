"""`make gpu-check` (`uav gpu-check`): does the whole path work on this machine, and at what rates, in one table.

On CUDA (sized for ≤ 10 min on one GPU): both embedded donors harvested over the demo data; the demo recipe's
first run (self) trained at 10× its steps and evaluated against the shuffled control; the bench (its GPU rates);
with two GPUs or more, a 2-process DDP run, a 2-process FSDP2 run and a donor spread over two GPUs by device_map.
Without CUDA it runs its small CPU form (≤ 5 min on a 2-core box: a few dozen texts, ten steps) and says so;
CI runs that form, so the script cannot rot.

The table ends with three ratios, each measured side by side in this run: harvest ÷ bare forward tokens/s (what
capturing and writing costs the donor), train step ÷ bare decoder forward + backward (what uav adds to the
decoder), and the store writer's MB/s ÷ the donor's output MB/s (> 1: the writer keeps up even when every token
of every harvested block is stored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

RECIPE = Path(__file__).resolve().parent / "recipes" / "demo.toml"


@dataclass
class Row:
    """One line of the table: a check that passed or failed, or a ratio."""

    check: str
    ok: bool | None  # None: skipped (e.g. no second GPU)
    seconds: float
    detail: str
    value: float | None = None  # ratios and rates


@dataclass(frozen=True)
class Form:
    """How big each step is: "cuda" is the real check, "cpu" the small form CI runs."""

    name: str
    texts: int | None  # texts per donor harvest (None: the whole demo data)
    steps_factor: float  # × the recipe's steps
    eval_limit: int | None  # texts per source for the eval (None: no eval, explain one text instead)
    bench_scale: float | None  # the full bench at this scale (None: only the three ratios, small)
    overhead_texts: int
    ratio_steps: int
    writer_rows: int
    multi_gpu_steps: int


FORMS = {"cuda": Form("cuda", None, 10, 20, 5.0, 256, 20, 100_000, 50),
         "cpu": Form("cpu", 32, 10 / 150, None, None, 16, 2, 8192, 0)}


def _step(rows: list[Row], name: str, fn: Callable[[], str]) -> bool:
    """Run one check; a failure is a row (with the error's last line), not the end of the table."""
    t0 = time.perf_counter()
    try:
        detail = fn()
        rows.append(Row(name, True, time.perf_counter() - t0, detail))
        return True
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table, and the command exits 1
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        rows.append(Row(name, False, time.perf_counter() - t0, last[:300]))
        traceback.print_exc()
        return False


def _torchrun(nproc: int, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        "-m", module, *args], capture_output=True, text=True, env=env, timeout=600)
    if r.returncode:
        raise RuntimeError(f"torchrun {module} exited {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return r


def run_gpu_check(out: Path, form: str = "auto") -> list[Row]:
    """Run every check of ``form`` ("auto": cuda when a GPU is visible, else cpu); write out/gpu-check.{md,json}."""
    from uav_cache.errors import UavError
    from uav_cache.harvest import harvest
    from uav_cache.store import Store
    from uav_train.trainer import train
    from pipelines import bench
    from pipelines.measure import synthetic_rows
    from pipelines.store_formats import DEFAULT_FORMAT, FORMATS, compare_formats, store_claims
    from pipelines.demo import donor_config, load_recipe, run_config

    if form == "auto":
        form = "cuda" if torch.cuda.is_available() else "cpu"
    if form not in FORMS:
        raise UavError(f"unknown --form {form!r}", "use auto, cuda or cpu")
    if form == "cuda" and not torch.cuda.is_available():
        raise UavError("--form cuda but torch sees no CUDA device", "run on a GPU box, or use --form cpu")
    f = FORMS[form]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out, prefix="tmp-"))
    rec = load_recipe(RECIPE)
    rows: list[Row] = []
    n_gpu = torch.cuda.device_count()
    t_all = time.perf_counter()
    print(f"uav gpu-check: {form} form" + (f" ({n_gpu} GPU: {torch.cuda.get_device_name(0)})" if n_gpu else
                                           " (no GPU visible: the small CPU form; on a GPU box it runs the real check)"),
          flush=True)
    try:
        # 1. both embedded donors, as the demo harvests them
        stores = {}
        for d in rec["donors"]:
            cfg = replace(donor_config(rec, d, RECIPE), out=str(work / "stores" / d["name"]), limit=f.texts,
                          progress=False)

            def one(cfg=cfg, name=d["name"]):
                harvest(cfg)
                st = Store(cfg.out)
                bad = st.verify()
                if bad or not st.meta["complete"]:
                    raise RuntimeError(f"store {cfg.out}: {bad[:1] or 'incomplete'}")
                stores[name] = cfg.out
                return f"{st.n_rows} texts, layers {','.join(st.layers)}, {st.meta['dtype']} (computed in " \
                       f"{st.meta['compute_dtype']})"
            _step(rows, f"harvest {d['name']}", one)

        # 2. the demo recipe's first run at 10× its steps (the CPU form: ten steps), then what it reads
        first = rec["runs"][0]
        run_cfg = run_config(rec, first)
        donor = next(d["name"] for d in rec["donors"] if d["store"] == run_cfg.stores[0])
        steps = max(10, round(run_cfg.steps * f.steps_factor))
        run_dir = work / "runs" / first["name"]
        tcfg = replace(run_cfg, stores=[stores.get(donor, "")], out=str(run_dir), steps=steps,
                       eval_every=max(10, steps // 10), val_items=min(run_cfg.val_items, 48 if form == "cuda" else 8),
                       progress=False)

        def training():
            t0 = time.perf_counter()
            train(tcfg)
            metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
            last = [m for m in metrics if "val_loss" in m][-1]
            gap = last.get("reading_gap")
            from uav_cache.device import resolve_precision

            prec = resolve_precision(tcfg.precision, torch.device("cuda" if form == "cuda" else "cpu"))
            return (f"{steps} steps of batch {tcfg.batch_size} in {time.perf_counter() - t0:.0f} s, {prec}; val loss {last['val_loss']:.3f}" + (f", reading gap {gap:+.3f}" if gap is not None else ""))
        trained = _step(rows, f"train {first['name']} ({steps} steps)", training)

        if f.eval_limit and trained:
            def evaluation():
                from uav_eval.protocol import EvalConfig, evaluate
                res = evaluate(EvalConfig(run=str(run_dir), limit=f.eval_limit, methods=["uav", "shuffled"],
                                          progress=False))
                by = res.reading.get("by_task", {})
                return "; ".join(f"{g}: uav {d['uav']:.2f} vs shuffled {d['shuffled']:.2f} ({d['metric']}, "
                                 f"{'reads' if d['reads'] else 'does not read'})" for g, d in by.items()) or "no pairs"
            _step(rows, f"eval {first['name']} (limit {f.eval_limit}, uav vs shuffled)", evaluation)
        elif trained:
            def explaining():
                from uav_eval.verbalizer import explain
                (q, a), = explain(str(run_dir), "Shares rose after the bank reported record profits.",
                                  ["What is the topic?"], max_new_tokens=6)
                return f"{q} → {a!r}"
            _step(rows, f"explain with {first['name']}", explaining)

        # 3. rates: the bench on CUDA, and the three ratios in both forms
        from uav_cache.models import load, resolve

        ratios: dict = {}

        def measure():
            spec = resolve(donor)
            dev = "cuda" if form == "cuda" else "cpu"
            model, tok = load(spec, dtype=torch.bfloat16 if dev == "cuda" else torch.float32, device=dev)
            h = bench.harvest_overhead(model, tok, spec, f.overhead_texts, work / "overhead")
            del model
            ts = bench.train_step_ratio(Path(stores[donor]), run_cfg.decoder, f.ratio_steps, work / "ratio")
            st = Store(stores[donor])
            real = st.read_last(st.layers[0], 0, st.n_rows).float().numpy()
            fm = compare_formats(synthetic_rows(real, f.writer_rows), work, dtypes=(st.meta["dtype"],),
                                 formats={DEFAULT_FORMAT: FORMATS[DEFAULT_FORMAT]}, repeats=1 if form == "cpu" else 3)
            writer = fm[0]["write_mb_s"]
            n_layers = len(donor_config(rec, next(d for d in rec["donors"] if d["name"] == donor), RECIPE).layers or [1])
            donor_mb_s = h["bare_tok_s"] * n_layers * int(st.meta["d_model"]) * 2 / 1e6  # every token of every block
            ratios.update(harvest=h, train_step=ts, writer_mb_s=writer, donor_mb_s=donor_mb_s, n_layers=n_layers)
            return f"{h['tokens']} tokens, {ts['steps']} steps, {f.writer_rows} rows"
        measured = _step(rows, "measure the ratios", measure) if donor in stores else False

        if f.bench_scale:
            def bench_all():
                res = bench.run_bench(out / "bench", scale=f.bench_scale, donor=donor)
                c = store_claims(res["formats"])
                return (f"scale {f.bench_scale}: harvest ÷ bare {res['harvest']['harvest_overhead']:.2f}, stream ÷ RAM "
                        f"{res['streaming']['streaming_step_ratio']:.2f}, writer {c['writer_mb_s']:.0f} MB/s, "
                        f"10× memory {res['memory']['memory_ratio_10x']:.2f} → {out / 'bench' / 'results.md'}")
            _step(rows, "bench (GPU rates)", bench_all)

        # 4. two GPUs: DDP, FSDP2 and a donor spread over both
        multi = [("2-process DDP run", "ddp"), ("2-process FSDP2 run", "fsdp")]
        if form == "cuda" and n_gpu >= 2 and donor in stores:
            recipe_args = ["--recipe", str(RECIPE), "--store", stores[donor], "--steps", str(f.multi_gpu_steps)]
            for label, sharding in multi:
                def distributed_run(sharding=sharding):
                    t0 = time.perf_counter()
                    _torchrun(2, "uav_train.trainer", *recipe_args, "--out", str(work / f"runs/{sharding}"),
                              "--sharding", sharding)
                    return f"{f.multi_gpu_steps} steps in {time.perf_counter() - t0:.0f} s (startup included)"
                _step(rows, label, distributed_run)

            def spread():
                d = next(d for d in rec["donors"] if d["name"] == donor)
                cfg = replace(donor_config(rec, d, RECIPE), out=str(work / "stores" / "spread"), limit=f.texts,
                              progress=False, device_map="balanced")
                harvest(cfg)
                a, b = Store(stores[donor]), Store(cfg.out)
                worst = max(float((a.read_last(n, 0, a.n_rows).float() - b.read_last(n, 0, b.n_rows).float()).abs().max())
                            for n in a.layers)
                return f"device_map balanced over {n_gpu} GPUs; rows differ from the one-GPU store by ≤ {worst:.3g}"
            _step(rows, "donor spread over GPUs (device_map)", spread)
        else:
            why = "CPU form" if form == "cpu" else f"{n_gpu} GPU visible"
            for label, _ in multi + [("donor spread over GPUs (device_map)", None)]:
                rows.append(Row(label, None, 0.0, f"skipped: {why} (needs 2)"))

        if measured:
            h, ts = ratios["harvest"], ratios["train_step"]
            rows += [
                Row("harvest ÷ bare forward tok/s", None, 0.0, f"{h['harvest_tok_s']:.0f} vs {h['bare_tok_s']:.0f} tok/s",
                    h["harvest_overhead"]),
                Row("train step ÷ bare decoder fwd+bwd", None, 0.0,
                    f"{ts['step_s']:.3f} vs {ts['bare_s']:.3f} s ({ts['tokens_per_batch']} tokens; LoRA + adapter + AdamW)",
                    ts["train_step_ratio"]),
                Row("store writer ÷ donor output MB/s", None, 0.0,
                    f"writer {ratios['writer_mb_s']:.0f} MB/s vs donor {ratios['donor_mb_s']:.1f} MB/s (every token of "
                    f"{ratios['n_layers']} blocks at the bare forward's rate)", ratios["writer_mb_s"] / ratios["donor_mb_s"]),
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all
    md = _markdown(rows, form, n_gpu, total)
    print(md, flush=True)
    (out / "gpu-check.md").write_text(md)
    (out / "gpu-check.json").write_text(json.dumps({"form": form, "gpus": n_gpu, "seconds": total,
                                                    "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def _markdown(rows: list[Row], form: str, n_gpu: int, seconds: float) -> str:
    device = f"{n_gpu} × {torch.cuda.get_device_name(0)}" if n_gpu else "no GPU"
    lines = [f"# uav gpu-check ({form} form, {device}, {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min)", ""]
    if form == "cpu":
        lines += ["No GPU was visible: this is the small CPU form (a few dozen texts, ten steps). On a GPU box "
                  "`make gpu-check` runs the real check.", ""]
    lines += ["| check | result | time | details |", "|---|---|---|---|"]
    for r in rows:
        if r.value is not None:
            res = f"**{r.value:.2f}**"
        else:
            res = {True: "pass", False: "**FAIL**", None: "–"}[r.ok]
        lines.append(f"| {r.check} | {res} | {r.seconds:.0f} s | {r.detail} |" if r.seconds else
                     f"| {r.check} | {res} | | {r.detail} |")
    return "\n".join(lines) + "\n"


__all__ = ["run_gpu_check", "Row", "FORMS"]
