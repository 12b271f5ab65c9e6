"""Privileged information: does a run say what the donor carried forward, beyond the words it is shown?

An example with a ``shown_from`` is read whole by the donor, and the run is shown a *view*: the positions from that
character on (their token vectors, computed in context, and a read-out pooled over those positions only). Three
answers are compared on the same questions (``mention``: does the answer name the gold one?):

- ``view``: the run on the view, in context;
- ``view_alone``: the run on the same later words read by the donor without the earlier part (the example's
  ``alone_of`` row): the text-only ceiling, what an inversion of the words could say;
- ``view_shuffled``: the run on another item's view from the same source.

The privileged gain is view − view_alone, with a paired bootstrap 95% interval; beside it the whole text's answer
(the ordinary ``uav`` row) and the probe ceiling per block (uav_cache.probe.view_probe): how well a linear reader
names the answer from the same positions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np

from uav_cache.store import Store
from uav_eval import metrics
from uav_train.run import LoadedRun
from uav_train.stream import InputSpec, Item, answer_kind, read_rows, task_of

METRIC = "mention"
METHODS = ("view", "view_alone", "view_shuffled")


def view_spec(spec: InputSpec, store: Store) -> tuple[InputSpec, bool]:
    """The spec that shows views, and whether their read-out can be pooled (the store keeps token vectors of every
    pooled layer); without them a view shows its token vectors only."""
    pooled = spec.pooled and all(layer in store.token_layers for layer in spec.layers)
    return replace(spec, views=pooled), pooled


def view_items(store: Store, split: str, limit: int | None, spec: InputSpec) -> tuple[list[Item], list[Item | None]]:
    """For every question of the first ``limit`` texts per source that have a ``shown_from``: the item shown its
    view in context, and the item shown its ``alone_of`` row whole (None where the store has no such row)."""
    ex = store.examples()
    committed = set(store.committed_rows().tolist())
    alone = {e["alone_of"]: r for r, e in enumerate(ex) if e.get("alone_of") and r in committed}
    splits = store.column("split")
    texts: dict[str, int] = defaultdict(int)
    picked = []
    for r, e in enumerate(ex):
        if not e.get("shown_from") or not e.get("qa") or r not in committed or (split != "all" and splits[r] != split):
            continue
        src = e.get("source") or ""
        if limit is not None and texts[src] >= limit:
            continue
        texts[src] += 1
        picked.append(r)
    if not picked:
        return [], []
    rows = sorted(set(picked) | {alone[ex[r]["id"]] for r in picked if ex[r]["id"] in alone})
    acts = dict(zip(rows, read_rows(store, np.array(rows), spec, spans=True)))
    views, alones = [], []
    for r in picked:
        e = ex[r]
        x = acts[r].view(e["shown_from"])
        if x is None:
            continue
        a = alone.get(e["id"])
        for qa in e["qa"]:
            q, ans = qa["question"], qa["answer"]
            common = dict(task=task_of(e, ans), source=e.get("source") or "", text=e["text"], kind=answer_kind(ans),
                          phrasing=qa.get("phrasing") or "seen")
            views.append(Item(x, q, ans, r, 0, **common, view_from=e["shown_from"]))
            alones.append(None if a is None else Item(acts[a].form(spec.eval_form()), q, ans, a, 0, **common))
    return views, alones


def summarise(rows: list[dict], whole: dict[tuple[int, str], dict], *, n_boot: int, seed: int) -> dict:
    """Per source: the mean ``mention`` of view, view_alone, view_shuffled and the whole text, the privileged gain
    (view − view_alone) and view − view_shuffled, each with a paired bootstrap 95% interval."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["source"], r["row"], r["question"])][r["method"]] = r
    out: dict[str, dict] = {}
    for src in sorted({k[0] for k in by}):
        keys = [k for k in by if k[0] == src and "view" in by[k]]
        get = lambda m: [by[k][m][METRIC] for k in keys if m in by[k]]  # noqa: E731
        d: dict = {"n": len(keys), "view": float(np.mean(get("view")))}
        for m, name in (("view_alone", "alone"), ("view_shuffled", "shuffled")):
            pair = [k for k in keys if m in by[k]]
            if pair:
                d[name] = float(np.mean([by[k][m][METRIC] for k in pair]))
                d["gain" if name == "alone" else "vs_shuffled"] = metrics.paired_difference(
                    [by[k]["view"][METRIC] for k in pair], [by[k][m][METRIC] for k in pair], n_boot=n_boot, seed=seed)
        w = [whole[(k[1], k[2])][METRIC] for k in keys if (k[1], k[2]) in whole]
        if w:
            d["whole"] = float(np.mean(w))
        out[src] = d
    return out


def evaluate_views(lr: LoadedRun, store: Store, split: str, limit: int | None, spec: InputSpec, run_methods, cfg,
                   whole_rows: list[dict]) -> tuple[list[dict], dict]:
    """The privileged evaluation of one run on ``store``'s texts with a ``shown_from``: (scored rows, summary). Empty
    when the store has none. ``run_methods`` is the protocol's (uav and shuffled on the view items, uav on the
    alone items); ``whole_rows`` are the ordinary uav rows, for the whole text's answer beside the view's."""
    vspec, pooled = view_spec(spec, store)
    views, alones = view_items(store, split, limit, vspec)
    if not views:
        return [], {}
    got = run_methods(lr, views, ["uav", "shuffled"], cfg)
    keep = [i for i, a in enumerate(alones) if a is not None]
    alone_preds = run_methods(lr, [alones[i] for i in keep], ["uav"], cfg)["uav"] if keep else []
    rows = []
    for method, items, preds in (("view", views, got["uav"]), ("view_shuffled", views, got["shuffled"]),
                                 ("view_alone", [views[i] for i in keep], alone_preds)):
        for it, p in zip(items, preds):
            clean = metrics.strip_echo(p, it.question)
            rows.append({"method": method, "row": it.row, "source": it.source, "task": it.task,
                         "question": it.question, "gold": it.answer, "raw": p, "pred": clean,
                         "view_from": it.view_from, **metrics.score_item(clean, it.answer)})
    whole = {(r["row"], r["question"]): r for r in whole_rows if r["method"] == "uav"}
    summary = {"metric": METRIC, "read_out_pooled_over_view": pooled,
               "by_source": summarise(rows, whole, n_boot=cfg.n_boot, seed=cfg.seed)}
    if cfg.probe:
        from uav_cache.probe import view_probe

        summary["probe"] = view_probe(store, split)
    return rows, summary
