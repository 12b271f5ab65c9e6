"""The probe ceiling: how much of a label a store's activations hold, read by the simplest reader there is.

For every classification source, every stored layer and every read-out, a multinomial logistic regression is
fitted on the train split, its L2 strength chosen on the val split, and its accuracy reported on the test split.
A verbalizer that scores far below this ceiling is not reading what the activation holds; one near it is.
Features are standardised with train-split statistics only. Plain torch (L-BFGS), no extra dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from uav_cache.examples import SPLITS
from uav_cache.errors import UavError
from uav_cache.store import Store

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # weight decay per example, chosen on val


@dataclass
class ProbeResult:
    source: str
    layer: str
    readout: str
    n_train: int
    n_val: int
    n_test: int
    n_classes: int
    l2: float  # the strength val chose
    val_acc: float
    test_acc: float
    test_lo: float  # 95% bootstrap interval of test accuracy
    test_hi: float
    majority: float  # test accuracy of always answering the train split's most frequent label

    def as_dict(self) -> dict:
        return asdict(self)


def _fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.nn.Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], n_classes).double()
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _acc(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (lin(x).argmax(1) == y).double().numpy()


def _boot(hits: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    if len(hits) < 2:
        return float(hits.mean()) if len(hits) else float("nan"), float(hits.mean()) if len(hits) else float("nan")
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), size=(n_boot, len(hits)))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def classification_rows(store: Store) -> dict[str, dict[str, list[tuple[int, str]]]]:
    """{source: {split: [(row, label), ...]}} for every committed row whose task is classification."""
    out: dict[str, dict[str, list[tuple[int, str]]]] = {}
    committed = set(store.committed_rows().tolist())
    task, split, source = store.column("task"), store.column("split"), store.column("source")
    rows = [r for r in np.flatnonzero(task == "classification").tolist() if r in committed]
    if not rows:
        return out
    recs = store.examples()
    for r in rows:
        qa = recs[r].get("qa") or []
        label = recs[r].get("label") or (qa[0]["answer"] if qa else None)
        if label is None:
            continue
        label = str(label).strip().lower()
        out.setdefault(str(source[r]), {}).setdefault(str(split[r]), []).append((r, label))
    return out


def probe(store: Store, *, layers: list[str] | None = None, readouts: list[str] | None = None,
          sources: list[str] | None = None) -> list[ProbeResult]:
    """A probe per (classification source, layer, read-out). Refuses, in one line, a store with no
    classification rows or a source without train, val and test rows."""
    data = classification_rows(store)
    if not data:
        raise UavError(f"store {store.path} has no classification examples, so there is no label to probe",
                       "probe a store whose dataset has task=classification rows (e.g. the demo's bbc_topic)")
    if sources:
        unknown = sorted(set(sources) - set(data))
        if unknown:
            raise UavError(f"no classification rows for source(s) {unknown}", f"use any of {', '.join(sorted(data))}")
        data = {s: data[s] for s in sources}
    layers = layers or store.layers
    readouts = readouts or store.readouts
    results = []
    for src, by_split in sorted(data.items()):
        missing = [s for s in SPLITS if not by_split.get(s)]
        if missing:
            raise UavError(f"classification source {src!r} has no {'/'.join(missing)} rows",
                           "build the dataset with train, val and test splits")
        classes = sorted({lab for rows in by_split.values() for _, lab in rows})
        cid = {c: i for i, c in enumerate(classes)}
        ys = {s: torch.tensor([cid[lab] for _, lab in by_split[s]]) for s in SPLITS}
        train_counts = np.bincount(ys["train"].numpy(), minlength=len(classes))
        majority = float((ys["test"] == int(train_counts.argmax())).double().mean())
        for layer in layers:
            for readout in readouts:
                xs = {s: store.read_rows(layer, np.array([r for r, _ in by_split[s]]), readout).double()
                      for s in SPLITS}
                mu, sd = xs["train"].mean(0), xs["train"].std(0).clamp_min(1e-6)
                xs = {s: (v - mu) / sd for s, v in xs.items()}
                best = None
                for l2 in L2_GRID:
                    lin = _fit(xs["train"], ys["train"], len(classes), l2)
                    va = float(_acc(lin, xs["val"], ys["val"]).mean())
                    if best is None or va > best[0]:
                        best = (va, l2, lin)
                va, l2, lin = best
                hits = _acc(lin, xs["test"], ys["test"])
                lo, hi = _boot(hits)
                results.append(ProbeResult(src, layer, readout, len(ys["train"]), len(ys["val"]), len(ys["test"]),
                                           len(classes), l2, va, float(hits.mean()), lo, hi, majority))
    return results


def table(results: list[ProbeResult]) -> str:
    """Markdown table of probe results, best read-out per source marked."""
    best = {}
    for r in results:
        if r.source not in best or r.val_acc > best[r.source].val_acc:
            best[r.source] = r  # chosen on val, like everything else
    lines = ["| source | layer | read-out | classes | train/val/test | val acc | test acc [95% CI] | majority |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        mark = " ◀ best on val" if best[r.source] is r else ""
        lines.append(f"| {r.source} | {r.layer} | {r.readout} | {r.n_classes} | {r.n_train}/{r.n_val}/{r.n_test} | "
                     f"{r.val_acc:.2f} | {r.test_acc:.2f} [{r.test_lo:.2f}, {r.test_hi:.2f}]{mark} | {r.majority:.2f} |")
    return "\n".join(lines)


def ceiling(results: list[ProbeResult], layer: str | None = None, readout: str | None = None) -> dict[str, ProbeResult]:
    """Per source, the probe a report sets beside the decoder: the run's own layer and read-out when given,
    else the one val picked."""
    out: dict[str, ProbeResult] = {}
    for r in results:
        if (layer and r.layer != layer) or (readout and r.readout != readout):
            continue
        if r.source not in out or r.val_acc > out[r.source].val_acc:
            out[r.source] = r
    return out


def view_rows(store: Store, split: str) -> dict[str, list[tuple[int, int, str]]]:
    """{source: [(row, shown_from, answer), ...]} for the committed rows of ``split`` ("all": every split) that have a
    ``shown_from``: the privileged evaluation's texts, each with the answer of its first question."""
    committed = set(store.committed_rows().tolist())
    splits = store.column("split")
    out: dict[str, list[tuple[int, int, str]]] = {}
    for r, e in enumerate(store.examples()):
        if e.get("shown_from") and e.get("qa") and r in committed and (split == "all" or splits[r] == split):
            out.setdefault(e.get("source") or "", []).append((r, int(e["shown_from"]), e["qa"][0]["answer"].strip().lower()))
    return out


def view_features(store: Store, layer: str, rows: list[tuple[int, int, str]]) -> torch.Tensor:
    """(n, d) the mean of each row's view (its stored token vectors from ``shown_from`` on) at ``layer``: the read-out
    a privileged evaluation pools over the positions it shows, by the harvest's pooling."""
    from uav_cache.store import pool, view_index

    out = []
    for r, first, _ in rows:
        toks, spans, pos = store.read_tokens(layer, r).float(), store.char_spans(r, r + 1)[0], store.stored_positions(r)
        mask = torch.zeros(1, len(pos), dtype=torch.bool)
        mask[0, view_index(spans, pos, first)] = True
        out.append(pool(toks[None], mask, "mean")[0] if mask.any() else torch.zeros(toks.shape[-1]))
    return torch.stack(out).double()


def folds_by_words(shown: list[str], folds: int) -> list[int]:
    """The fold of each row, by the words it shows: rows that show the same words share a fold, so no fold's words
    appear in its fit. The words after an entity vary with the wording, and a fit that met them beside other
    entities learns "these words → that entity" and scores below chance at the blocks where the words dominate."""
    order = {t: i % folds for i, t in enumerate(sorted(set(shown)))}
    return [order[t] for t in shown]


def view_probe(store: Store, split: str, *, layers: list[str] | None = None, folds: int = 4) -> dict[str, dict]:
    """How well the simplest reader names the answer from the positions a privileged evaluation shows, per source
    and per layer with stored token vectors: a multinomial logistic regression on the view's mean. Fitted on the
    source's train rows (L2 chosen on val) and scored on ``split`` where the store has them and they name at least
    half of the answers scored; otherwise scored by
    ``folds``-fold cross-validation over the evaluated rows, the folds split by the words shown (each answer is met in
    other wordings in the other folds), which is the design an evaluation set with several wordings per answer allows.
    An answer the fit never met counts as a miss. Returns {source: {"method", "n", "classes", "chance",
    "by_layer": {layer: accuracy}}}; sources whose answers never repeat are left out."""
    layers = [lay for lay in (layers or store.token_layers) if lay in store.token_layers]
    evaluated, trained = view_rows(store, split), view_rows(store, "train")
    validated = view_rows(store, "val") if split != "val" else {}
    ex = store.examples()
    out: dict[str, dict] = {}
    for src, rows in sorted(evaluated.items()):
        fit_rows, val_rows = trained.get(src, []), validated.get(src, [])
        met = {a for _, _, a in fit_rows}
        # a split grouped by answer (each entity in one split only) leaves the fit nothing to name: cross-validate
        if fit_rows and split != "train" and np.mean([a in met for _, _, a in rows]) >= 0.5:
            method, plan = "train split", [(fit_rows, rows)]
        else:
            counts: dict[str, int] = {}
            for _, _, a in rows:
                counts[a] = counts.get(a, 0) + 1
            keep = [x for x in rows if counts[x[2]] > 1]
            if len({a for _, _, a in keep}) < 2:
                continue
            fold = folds_by_words([ex[r]["text"][first:].strip() for r, first, _ in keep], folds)
            method = f"{folds}-fold cross-validation"
            plan = [([x for x, f in zip(keep, fold) if f != k], [x for x, f in zip(keep, fold) if f == k])
                    for k in range(folds) if k in fold]
            rows, val_rows = keep, []
        classes = sorted({a for tr, _ in plan for _, _, a in tr})
        cid = {c: i for i, c in enumerate(classes)}
        by_layer = {}
        for layer in layers:
            feats = {id(x): f for x, f in zip(rows + fit_rows + val_rows,
                                              view_features(store, layer, rows + fit_rows + val_rows))}
            hits = []
            for tr, te in plan:
                x = torch.stack([feats[id(r)] for r in tr])
                mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
                y = torch.tensor([cid[a] for _, _, a in tr])
                l2 = L2_GRID[1]
                if val_rows:  # the strength the val split picks, as for labels
                    xv = (torch.stack([feats[id(r)] for r in val_rows]) - mu) / sd
                    yv = [cid.get(a, -1) for _, _, a in val_rows]
                    l2 = max(L2_GRID, key=lambda c: float(np.mean(_acc(_fit((x - mu) / sd, y, len(classes), c), xv,
                                                                        torch.tensor(yv)))))
                lin = _fit((x - mu) / sd, y, len(classes), l2)
                xt = (torch.stack([feats[id(r)] for r in te]) - mu) / sd
                hits.extend(_acc(lin, xt, torch.tensor([cid.get(a, -1) for _, _, a in te])).tolist())
            by_layer[layer] = float(np.mean(hits))
        out[src] = {"method": method, "n": len(rows), "classes": len(classes), "chance": 1 / max(len(classes), 1),
                    "by_layer": by_layer}
    return out
