"""Adapter-only transfer by distillation: fit donor B's new adapter to the soft tokens that the frozen run's adapter
(donor A) emits for the same texts, before any decoder step.

The frozen LoRA was trained to read exactly A's soft tokens, so "emit what A's adapter emits for this text" is the
most direct target B's adapter can have. The closed-form warm start only aims B at the decoder's word embeddings,
which A's trained adapter has moved away from. No decoder is in the loop: a step costs the adapter alone (~0.09 s
on a 2-core CPU for the demo's adapters, against ~2.5 s for a decoder step), so 400 steps cost ~15 decoder steps. Both stores must hold the same texts
(matched by example id); tokens are matched by their characters, so the donors' tokenizers may differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_train.adapters import InputAdapter
from uav_train.stream import InputSpec, read_rows


@dataclass
class Pairs:
    """Inputs of the new adapter beside the frozen run's soft tokens for the same texts (float32, on one device).

    pooled_x (N, layers, d_B) → pooled_y (N, k, d_out); tokens_x (M, token_layers, d_B) → tokens_y (M, m, d_out):
    one row per B token, its target the overlap-weighted mean of the soft tokens of A's tokens that share its
    characters. B tokens no A token overlaps (B's BOS, text past A's cut) are left out."""

    pooled_x: torch.Tensor | None
    pooled_y: torch.Tensor | None
    tokens_x: torch.Tensor | None
    tokens_y: torch.Tensor | None

    @property
    def n(self) -> tuple[int, int]:
        return (0 if self.pooled_x is None else len(self.pooled_x), 0 if self.tokens_x is None else len(self.tokens_x))


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) characters shared by each pair of [start, stop) spans; spans with start < 0 share none."""
    lo = np.maximum(a[:, None, 0], b[None, :, 0])
    hi = np.minimum(a[:, None, 1], b[None, :, 1])
    w = np.clip(hi - lo, 0, None).astype(np.float64)
    w[a[:, 0] < 0] = 0
    w[:, b[:, 0] < 0] = 0
    return w


def _by_id(stores: list[Store], split: str) -> dict[str, tuple[Store, int]]:
    out = {}
    for st in stores:
        rows = st.split_rows(split)
        ids = st.column("id")
        for r in rows.tolist():
            out[str(ids[r])] = (st, int(r))
    return out


@torch.no_grad()
def teacher_pairs(student: list[Store], student_spec: InputSpec, teacher: InputAdapter, teacher_stores: list[Store],
                  teacher_spec: InputSpec, split: str = "train", max_texts: int = 4096,
                  device: torch.device | str = "cpu") -> Pairs:
    """The (new adapter's input, frozen adapter's output) pairs of ``split``'s texts that both stores hold. With views
    in both specs, a text with a ``shown_from`` adds a pooled pair for its view too (each donor's read-out pooled over
    its own tokens from that character on): the frozen run's soft tokens for what the donor carried forward."""
    theirs = _by_id(teacher_stores, split)
    mine = [(sid, st, r) for sid, (st, r) in _by_id(student, split).items() if sid in theirs][:max_texts]
    if not mine:
        raise UavError(f"the frozen run's stores hold none of this run's {split} texts (matched by example id)",
                       "harvest both donors over the same dataset, or drop distill")
    want_pooled = teacher.pooled is not None and student_spec.pooled and teacher_spec.pooled
    want_tokens = teacher.tokens is not None and student_spec.tokens and teacher_spec.tokens
    views = want_pooled and student_spec.views and teacher_spec.views
    if not want_pooled and not want_tokens:
        raise UavError("the new adapter and the frozen run's share no input branch (pooled read-out or token vectors)",
                       "give this run the inputs the frozen run reads, or drop distill")
    px, py, tx, ty = [], [], [], []
    teacher = teacher.to(device).eval()
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (student store, teacher store) → row pairs
    for sid, st, r in mine:
        tst, tr = theirs[sid]
        groups.setdefault((id(st), id(tst)), []).append((r, tr))
    stores = {id(s): s for s in [*student, *teacher_stores]}
    for (si, ti), pairs in groups.items():
        for c in range(0, len(pairs), 256):  # a chunk at a time: read_rows reads a shard's rows in one go
            rows = np.array(pairs[c:c + 256])
            recs = stores[si].examples() if views else None
            for r, a, b in zip(rows[:, 0], read_rows(stores[si], rows[:, 0], student_spec, spans=want_tokens),
                               read_rows(stores[ti], rows[:, 1], teacher_spec, spans=want_tokens)):
                shown = recs[int(r)].get("shown_from") if views else None
                seen = [(a.pooled, b.pooled)] if want_pooled else []
                if shown:
                    va, vb = a.view(shown), b.view(shown)
                    if va is not None and vb is not None:
                        seen.append((va.pooled, vb.pooled))
                for xa, xb in seen:
                    xb = xb.float().unsqueeze(0).unsqueeze(1).to(device)  # (1, 1, layers, d_A)
                    py.append(teacher.pooled(xb, torch.ones(1, 1, dtype=torch.bool, device=device))[0].cpu())
                    px.append(xa.float())
                if want_tokens:
                    m = teacher.tokens.config.m
                    yb = teacher.tokens(b.tokens.float().unsqueeze(0).to(device),
                                        torch.ones(1, len(b.tokens), dtype=torch.bool, device=device))[0].cpu()
                    yb = yb.view(len(b.tokens), m, -1).double()
                    w = _overlap(a.spans[a.positions], b.spans[b.positions])  # (S_B, S_A)
                    keep = w.sum(1) > 0
                    if keep.any():
                        w = torch.from_numpy(w[keep] / w[keep].sum(1, keepdims=True))
                        tx.append(a.tokens[torch.from_numpy(keep)].float())
                        ty.append(torch.einsum("ba,amd->bmd", w, yb).float())
    cat = lambda xs: torch.cat(xs).to(device) if xs else None  # noqa: E731
    stack = lambda xs: torch.stack(xs).to(device) if xs else None  # noqa: E731
    return Pairs(stack(px), stack(py), cat(tx), cat(ty))


def _cosine(adapter: InputAdapter, p: Pairs, idx_p: torch.Tensor | None = None,
            idx_t: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Mean cosine similarity of the adapter's soft tokens to the targets, per branch (on the rows given)."""
    out = {}
    if p.pooled_x is not None and adapter.pooled is not None:
        x, y = (p.pooled_x, p.pooled_y) if idx_p is None else (p.pooled_x[idx_p], p.pooled_y[idx_p])
        got = adapter.pooled(x.unsqueeze(1), torch.ones(len(x), 1, dtype=torch.bool, device=x.device))
        out["pooled"] = F.cosine_similarity(got, y, dim=-1).mean()
    if p.tokens_x is not None and adapter.tokens is not None:
        x, y = (p.tokens_x, p.tokens_y) if idx_t is None else (p.tokens_x[idx_t], p.tokens_y[idx_t])
        got = adapter.tokens(x.unsqueeze(1), torch.ones(len(x), 1, dtype=torch.bool, device=x.device))
        out["tokens"] = F.cosine_similarity(got.view(len(x), -1, y.shape[-1]), y, dim=-1).mean()
    return out


def distill(adapter: InputAdapter, teacher: InputAdapter, train: Pairs, val: Pairs, steps: int, lr: float = 1e-3,
            batch: int = 256, every: int = 25, seed: int = 0) -> dict:
    """Train ``adapter`` for ``steps`` Adam steps to emit the teacher's soft tokens (1 − cosine per soft token; the
    output scale is the teacher's, copied), keeping the weights with the best val cosine. Returns the val cosine
    per branch before and after, and the step kept."""
    for name in ("pooled", "tokens"):
        mine, theirs = getattr(adapter, name), getattr(teacher, name)
        if mine is not None and theirs is not None:
            if mine.k != theirs.k:
                raise UavError(f"distill: the new {name} adapter emits {mine.k} soft tokens per input, the frozen run's "
                               f"{theirs.k}", "give the new adapter the frozen run's k (pooled) or m (tokens)")
            with torch.no_grad():
                mine.log_gain.copy_(theirs.log_gain)
    g = torch.Generator().manual_seed(seed)
    params = [p for n, p in adapter.named_parameters() if p.requires_grad and not n.endswith("log_gain")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def score() -> dict[str, float]:
        adapter.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in _cosine(adapter, val).items()}

    before = score()
    best, best_step = sum(before.values()), 0
    best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    n_p, n_t = train.n
    for step in range(1, steps + 1):
        adapter.train()
        ip = torch.randint(n_p, (min(batch, n_p),), generator=g) if n_p else None
        it = torch.randint(n_t, (batch,), generator=g) if n_t else None
        loss = sum(1 - c for c in _cosine(adapter, train, ip, it).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            now = score()
            if sum(now.values()) > best:
                best, best_step = sum(now.values()), step
                best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    adapter.load_state_dict(best_state)
    after = score()
    return {"distill_steps": steps, "distill_best_step": best_step, "distill_pairs": list(train.n),
            **{f"distill_val_cos_{k}_before": round(v, 4) for k, v in before.items()},
            **{f"distill_val_cos_{k}": round(v, 4) for k, v in after.items()}}


def teacher_stores(run_stores: list) -> list[Store]:
    """The frozen run's stores, where its config.json records them (StoreRecord.location)."""
    out = []
    for s in run_stores:
        path = s.location() or s.abspath or s.path
        try:
            out.append(Store(path))
        except UavError as e:
            raise UavError(f"distill reads the frozen run's store {s.path}, which cannot be opened ({e})",
                           "keep the frozen run's store where it was, or drop distill") from None
    return out
