"""Adapters: donor activations → k soft tokens in the decoder's embedding space.

Every adapter takes ``x`` of shape (batch, tokens, layers, d_in) plus a (batch, tokens) mask, so one store
layout serves them all: UAV's read-out is tokens=1, layers=1; an all-token store gives tokens>1, and
several stored layers give layers>1. Inputs are scale-free (LayerNorm / L2 normalisation first), and
outputs are put on the decoder's own embedding scale, so donors whose activations differ by orders of
magnitude (Gemma's reach 1e5) train with the same settings.

Kinds: ``mlp`` (UAV's MLP), ``qformer`` (UAV's cross-attention adapter), ``affine`` (scalar affine,
d+1 parameters, from "Learning Self-Interpretation from Interpretability Artifacts"), ``lowrank``
(affine plus a rank-r correction) and ``pervector`` (m soft tokens per input vector: a window of token vectors
becomes a window of soft tokens, the Activation-Oracle / Rep2Text way of reading what a text says). One config
dataclass each; :func:`build_adapter` picks by name.

A run's adapter is an :class:`InputAdapter`: a *pooled* branch over the stored read-out (one vector per layer)
and/or a *tokens* branch over a variable number of token vectors (a mask marks the real ones). It returns the soft
tokens with a mask, so items of one batch may carry different numbers of them (a pooled-only item, a one-token item,
a 40-token window); prompt.py puts each item's real soft tokens, in order, where its placeholders are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from uav_cache.config import check_types
from uav_cache.errors import UavError


@dataclass
class MLPConfig:
    """LayerNorm → Linear → GELU → (bottleneck) → Linear to k tokens. Token sequences are mean-pooled."""

    kind: str = "mlp"
    k: int = 8  # soft tokens
    hidden: int = 1024
    bottleneck: int | None = None  # an extra GELU layer of this width, if set
    dropout: float = 0.0
    center: bool = False  # subtract the train split's mean activation first (set by the trainer, saved)
    skip: bool = False  # a linear path from the input to every soft token (the trainer can warm-start it in closed form)


@dataclass
class QFormerConfig:
    """k learned queries cross-attend to context tokens made from every donor vector (UAV defaults)."""

    kind: str = "qformer"
    k: int = 64  # learned queries = soft tokens
    n_ctx: int = 8  # context tokens per donor vector
    layers: int = 2
    heads: int = 8
    width: int | None = None  # internal width; None = the decoder's
    dropout: float = 0.1
    center: bool = False  # subtract the train split's mean activation first (set by the trainer, saved)


@dataclass
class AffineConfig:
    """``exp(log_scale) · normalize(P x) + bias``: one soft token per stored layer, d_out + 1 parameters.
    When donor and decoder widths differ, ``P`` is a fixed random orthogonal projection (``projection =
    "fixed"``, no parameters, seeded) or a learned Linear (``"learned"``)."""

    kind: str = "affine"
    projection: str = "fixed"
    seed: int = 0
    center: bool = False  # subtract the train split's mean activation first (set by the trainer, saved)


@dataclass
class LowRankConfig(AffineConfig):
    """Scalar affine plus ``B A normalize(P x)`` with rank r (B starts at zero: training starts at affine)."""

    kind: str = "lowrank"
    rank: int = 8


@dataclass
class PerVectorConfig:
    """Each input position (its layers' vectors concatenated) → m soft tokens: LayerNorm → Linear → GELU → Linear,
    plus a linear skip path that the trainer can warm-start in closed form (each token's vector → the decoder's own
    embedding of that token's text)."""

    kind: str = "pervector"
    m: int = 1  # soft tokens per input vector
    hidden: int = 1024  # width of the non-linear path (0: the linear skip path alone)
    dropout: float = 0.0
    center: bool = False  # subtract the train split's mean token vector first (set by the trainer, saved)
    skip: bool = True  # a linear path from each vector to its soft token(s) (warm-startable)


CONFIGS = {"mlp": MLPConfig, "qformer": QFormerConfig, "affine": AffineConfig, "lowrank": LowRankConfig,
           "pervector": PerVectorConfig}
TOKEN_KINDS = ("pervector", "qformer")  # adapters that read a variable number of token vectors


def adapter_config(kind: str, **options) -> MLPConfig | QFormerConfig | AffineConfig | LowRankConfig:
    """A config by adapter name, refusing unknown names and options with the valid ones listed."""
    if kind not in CONFIGS:
        raise UavError(f"unknown adapter {kind!r}", f"use one of {', '.join(CONFIGS)}")
    cls = CONFIGS[kind]
    valid = {f.name for f in fields(cls)} - {"kind"}
    bad = set(options) - valid
    if bad:
        raise UavError(f"adapter {kind} has no option(s) {sorted(bad)}", f"valid options: {sorted(valid)}")
    check_types(cls, options, f"adapter {kind} options")
    cfg = cls(**options)
    for f in fields(cls):  # sizes and counts: k = 0 would train an adapter that emits nothing
        v = getattr(cfg, f.name)
        low = 0 if (kind, f.name) == ("pervector", "hidden") else 1  # pervector hidden 0: its linear skip path alone
        if isinstance(v, int) and not isinstance(v, bool) and f.name != "seed" and v < low:
            raise UavError(f"adapter {kind} option {f.name} = {v} must be ≥ {low}",
                           f"set adapter_options.{f.name} to a positive number (default {getattr(cls(), f.name)})")
    if not 0 <= getattr(cfg, "dropout", 0) < 1:
        raise UavError(f"adapter {kind} option dropout = {cfg.dropout} is not in [0, 1)", "e.g. adapter_options.dropout = 0.1")
    if getattr(cfg, "projection", "fixed") not in ("fixed", "learned"):
        raise UavError(f"adapter {kind} option projection = {cfg.projection!r}", 'use "fixed" or "learned"')
    return cfg


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Rescale each vector to RMS 1. LayerNorm alone is not scale-free: its eps (1e-5) dominates the variance
    of small activations (|x_i| ~ 1e-3 gives variance 1e-6), so tiny donors would come out squashed."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, ...) → (B, ...) averaging the real tokens only."""
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


class Adapter(nn.Module):
    """Common contract. ``out_norm`` is the decoder's mean input-embedding norm; soft tokens are emitted
    at that norm (times a learned gain for the mlp/qformer kinds)."""

    def __init__(self, config, d_in: int, n_layers: int, d_out: int, out_norm: float):
        super().__init__()
        self.config, self.d_in, self.n_layers, self.d_out = config, d_in, n_layers, d_out
        self.register_buffer("out_norm", torch.tensor(float(out_norm)))
        if getattr(config, "center", False):
            # Activations share a large common direction (the mean); what tells items apart is the rest. The
            # trainer fills this with the train split's mean per layer; it is saved with the weights.
            self.register_buffer("shift", torch.zeros(n_layers, d_in))

    def _centered(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, L, d) minus the per-layer shift, when the adapter centres its input."""
        return x - self.shift.to(x.dtype) if hasattr(self, "shift") else x

    @property
    def k(self) -> int:
        return self.config.k if hasattr(self.config, "k") else self.n_layers

    def describe(self) -> dict:
        """What is needed to rebuild this adapter (saved as uav_adapter.json beside the weights)."""
        return {"config": asdict(self.config), "d_in": self.d_in, "n_layers": self.n_layers,
                "d_out": self.d_out, "out_norm": float(self.out_norm)}

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _to_scale(self, y: torch.Tensor, log_gain: torch.Tensor) -> torch.Tensor:
        return F.normalize(y, dim=-1) * self.out_norm * log_gain.exp()


class MLPAdapter(Adapter):
    def __init__(self, config: MLPConfig, d_in: int, n_layers: int, d_out: int, out_norm: float):
        super().__init__(config, d_in, n_layers, d_out, out_norm)
        d = d_in * n_layers
        mid = [nn.Linear(config.hidden, config.bottleneck), nn.GELU()] if config.bottleneck else []
        last_in = config.bottleneck or config.hidden
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                                 *mid, nn.Linear(last_in, config.k * d_out))
        self.skip = nn.Linear(d, d_out) if config.skip else None
        self.log_gain = nn.Parameter(torch.zeros(()))

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, layers·d_in): the pooled, centred, unit-RMS input every path of the adapter starts from."""
        return _unit_rms(_masked_mean(self._centered(x).flatten(2), mask))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        v = self.features(x, mask)
        y = self.net(v).view(b, self.config.k, self.d_out)
        if self.skip is not None:
            y = y + self.skip(v).unsqueeze(1)
        return self._to_scale(y, self.log_gain)

    @torch.no_grad()
    def warm_start(self, v: torch.Tensor, target: torch.Tensor, ridge: float = 0.1) -> float:
        """Set the skip path to the ridge regression ``v → target`` (closed form) and damp the MLP, so training
        starts from soft tokens that already point where the answers' own embeddings point: the decoder can
        copy them from the first step instead of learning to ignore noise. Returns the fit's R² on (v, target)."""
        if self.skip is None:
            raise UavError("warm start needs an mlp adapter with skip = true", "set adapter_options.skip = true")
        w, b, r2 = ridge_fit(v, target, ridge)  # w: (d, d_out)
        self.skip.weight.copy_(w.T.to(self.skip.weight.dtype))
        self.skip.bias.copy_(b.to(self.skip.bias.dtype))
        self.net[-1].weight.mul_(0.1), self.net[-1].bias.mul_(0.1)
        return r2

    @torch.no_grad()
    def warm_start_vocab(self, v: torch.Tensor, first: torch.Tensor, embeddings: torch.Tensor, *, steps: int = 300,
                         lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0) -> tuple[float, int]:
        """Set the skip path to a linear map from ``v`` whose output, scored against the decoder's input embeddings
        of the words ``first`` holds (a softmax over those words), picks each item's own word; the MLP is damped as in
        :meth:`warm_start`. Full-batch AdamW, seeded, on the features only (no decoder pass). Returns (the fit's
        accuracy on (v, first), how many distinct words it chose among)."""
        if self.skip is None:
            raise UavError("warm start needs an mlp adapter with skip = true", "set adapter_options.skip = true")
        words, y = torch.unique(first, return_inverse=True)
        table = embeddings[words].to(v.dtype)
        g = torch.Generator(device="cpu").manual_seed(seed)
        lin = nn.Linear(v.shape[1], self.d_out, dtype=v.dtype, device=v.device)
        with torch.no_grad():
            lin.weight.copy_((torch.rand(lin.weight.shape, generator=g) * 2 - 1).mul_(v.shape[1] ** -0.5))
            lin.bias.zero_()
        opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(lin(v) @ table.T, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.skip.weight.copy_(lin.weight.to(self.skip.weight.dtype))
        self.skip.bias.copy_(lin.bias.to(self.skip.bias.dtype))
        self.net[-1].weight.mul_(0.1), self.net[-1].bias.mul_(0.1)
        return float(((lin(v) @ table.T).argmax(1) == y).float().mean()), len(words)


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries → context) and a 4× GELU FFN, both residual."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.nq, self.nc, self.nf = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, ctx: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        c = self.nc(ctx)
        q = q + self.drop(self.attn(self.nq(q), c, c, key_padding_mask=pad, need_weights=False)[0])
        return q + self.drop(self.ffn(self.nf(q)))


class QFormerAdapter(Adapter):
    def __init__(self, config: QFormerConfig, d_in: int, n_layers: int, d_out: int, out_norm: float):
        super().__init__(config, d_in, n_layers, d_out, out_norm)
        w = config.width or d_out
        if w % config.heads:
            raise UavError(f"qformer width {w} is not divisible by heads={config.heads}", "change heads or width")
        self.in_norm = nn.LayerNorm(d_in)
        self.to_ctx = nn.Linear(d_in, config.n_ctx * w)
        self.ctx_norm = nn.LayerNorm(w)
        self.layer_emb = nn.Parameter(torch.zeros(n_layers, 1, w))
        self.queries = nn.Parameter(torch.randn(config.k, w) * 0.02)
        self.blocks = nn.ModuleList(_CrossBlock(w, config.heads, config.dropout) for _ in range(config.layers))
        self.out_ln = nn.LayerNorm(w)
        self.out = nn.Linear(w, d_out) if w != d_out else nn.Identity()
        self.log_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, l, _ = x.shape
        n_ctx = self.config.n_ctx
        ctx = self.ctx_norm(self.to_ctx(self.in_norm(_unit_rms(self._centered(x)))).view(b, s, l, n_ctx, -1) + self.layer_emb)
        ctx = ctx.reshape(b, s * l * n_ctx, -1)
        pad = (~mask.bool()).repeat_interleave(l * n_ctx, dim=1) if s > 1 else None
        q = self.queries.unsqueeze(0).expand(b, -1, -1)
        for blk in self.blocks:
            q = blk(q, ctx, pad)
        return self._to_scale(self.out(self.out_ln(q)), self.log_gain)


class AffineAdapter(Adapter):
    def __init__(self, config: AffineConfig, d_in: int, n_layers: int, d_out: int, out_norm: float):
        super().__init__(config, d_in, n_layers, d_out, out_norm)
        if config.projection not in ("fixed", "learned"):
            raise UavError(f"unknown affine projection {config.projection!r}", "use fixed or learned")
        self.proj: nn.Module | None = None
        if d_in != d_out:
            if config.projection == "learned":
                self.proj = nn.Linear(d_in, d_out, bias=False)
            else:
                g = torch.Generator().manual_seed(config.seed)
                q, _ = torch.linalg.qr(torch.randn(max(d_in, d_out), min(d_in, d_out), generator=g))
                self.register_buffer("fixed_proj", q if d_out > d_in else q.T)  # (d_out, d_in), orthonormal
        self.log_scale = nn.Parameter(torch.tensor(math.log(max(out_norm, 1e-6))))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def _direction(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        v = _masked_mean(self._centered(x), mask)  # (B, layers, d_in)
        if self.proj is not None:
            v = self.proj(v)
        elif hasattr(self, "fixed_proj"):
            v = v @ self.fixed_proj.T
        return F.normalize(v, dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * self._direction(x, mask) + self.bias


class LowRankAdapter(AffineAdapter):
    def __init__(self, config: LowRankConfig, d_in: int, n_layers: int, d_out: int, out_norm: float):
        super().__init__(config, d_in, n_layers, d_out, out_norm)
        self.down = nn.Linear(d_out, config.rank, bias=False)
        self.up = nn.Linear(config.rank, d_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        u = self._direction(x, mask)
        return self.log_scale.exp() * u + self.bias + self.out_norm * self.up(self.down(u))


class PerVectorAdapter(Adapter):
    """A window of S token vectors → S·m soft tokens, in order, so the decoder reads them as it reads text. The
    soft tokens keep each token's own position in the prompt: order is carried by the decoder's position encoding."""

    def __init__(self, config: PerVectorConfig, d_in: int, n_layers: int, d_out: int, out_norm: float):
        super().__init__(config, d_in, n_layers, d_out, out_norm)
        d = d_in * n_layers
        self.norm = nn.LayerNorm(d)
        self.net = nn.Sequential(nn.Linear(d, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden, config.m * d_out)) if config.hidden else None
        self.skip = nn.Linear(d, config.m * d_out) if config.skip or not config.hidden else None
        self.log_gain = nn.Parameter(torch.zeros(()))

    @property
    def k(self) -> int:
        return self.config.m

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, layers·d_in): each position's centred, unit-RMS vectors (per layer), concatenated."""
        return _unit_rms(self._centered(x)).flatten(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        v = self.features(x)
        y = torch.zeros(b, s, self.config.m * self.d_out, dtype=v.dtype, device=v.device)
        if self.net is not None:
            y = y + self.net(self.norm(v))
        if self.skip is not None:
            y = y + self.skip(v)
        return self._to_scale(y.view(b, s * self.config.m, self.d_out), self.log_gain)

    @torch.no_grad()
    def warm_start(self, v: torch.Tensor, target: torch.Tensor, ridge: float = 0.1) -> float:
        """The skip path := ridge regression from each position's features ``v`` (N, layers·d_in) to ``target``
        (N, d_out), e.g. the decoder's embedding of that token's text; the non-linear path is damped. With m > 1
        every one of a position's soft tokens starts from the same fit. Returns R² on (v, target)."""
        if self.skip is None:
            raise UavError("warm start needs a pervector adapter with skip = true", "set token_adapter_options.skip = true")
        w, b, r2 = ridge_fit(v, target, ridge)
        self.skip.weight.copy_(w.T.repeat(self.config.m, 1).to(self.skip.weight.dtype))
        self.skip.bias.copy_(b.repeat(self.config.m).to(self.skip.bias.dtype))
        if self.net is not None:
            self.net[-1].weight.mul_(0.1), self.net[-1].bias.mul_(0.1)
        return r2


def ridge_fit(v: torch.Tensor, target: torch.Tensor, ridge: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Closed-form ridge regression ``target ≈ v @ w + b`` (float64; the penalty is ``ridge`` × the mean diagonal of
    the centred Gram matrix, so it does not depend on the features' scale). Returns (w, b, R² on the data)."""
    v, target = v.double(), target.double()
    mu_v, mu_t = v.mean(0), target.mean(0)
    vc, tc = v - mu_v, target - mu_t
    gram = vc.T @ vc
    lam = ridge * gram.diagonal().mean()
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), vc.T @ tc)
    b = mu_t - mu_v @ w
    r2 = float(1 - (v @ w + b - target).pow(2).sum() / tc.pow(2).sum())
    return w, b, r2


KINDS = {"mlp": MLPAdapter, "qformer": QFormerAdapter, "affine": AffineAdapter, "lowrank": LowRankAdapter,
         "pervector": PerVectorAdapter}


def build_adapter(config, d_in: int, n_layers: int, d_out: int, out_norm: float) -> Adapter:
    return KINDS[config.kind](config, d_in, n_layers, d_out, out_norm)


def _from_description(desc: dict) -> Adapter:
    cfg = dict(desc["config"])
    return build_adapter(adapter_config(cfg.pop("kind"), **cfg), desc["d_in"], desc["n_layers"], desc["d_out"],
                         desc["out_norm"])


@dataclass
class AdapterInput:
    """One batch of what items show the adapter (stream.stack_acts builds it): ``pooled`` (B, Lp, d) read-outs with
    ``has_pooled`` (B,) marking the items that show one, and ``tokens`` (B, S, Lt, d) token vectors with ``mask``
    (B, S) marking the real ones. A branch the batch does not use is None."""

    pooled: torch.Tensor | None = None
    has_pooled: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def to(self, device) -> "AdapterInput":
        return AdapterInput(*(t.to(device) if t is not None else None
                              for t in (self.pooled, self.has_pooled, self.tokens, self.mask)))


class InputAdapter(nn.Module):
    """A run's adapter: a pooled branch and/or a tokens branch; soft tokens = [pooled branch's k][tokens branch's],
    with a (B, K) mask of the ones each item really has (an item without a pooled read-out has none of the first k;
    a window of S tokens has S·m of the rest, or the Q-Former's k when S > 0)."""

    def __init__(self, pooled: Adapter | None, tokens: Adapter | None):
        super().__init__()
        if pooled is None and tokens is None:
            raise UavError("an adapter needs a pooled branch, a tokens branch or both",
                           "set adapter (pooled read-out) and/or token_layers with token_adapter")
        self.pooled, self.tokens = pooled, tokens

    def forward(self, b: AdapterInput) -> tuple[torch.Tensor, torch.Tensor]:
        parts, masks = [], []
        if self.pooled is not None and b.pooled is not None:
            n = b.pooled.shape[0]
            y = self.pooled(b.pooled.unsqueeze(1), torch.ones(n, 1, dtype=torch.bool, device=b.pooled.device))
            parts.append(y)
            masks.append(b.has_pooled.bool().unsqueeze(1).expand(-1, y.shape[1]))
        if self.tokens is not None and b.tokens is not None and b.tokens.shape[1]:
            mask = b.mask.bool()
            safe = mask.clone()
            safe[~mask.any(1), 0] = True  # an item with no token attends to a zero vector, not to nothing (NaN)
            y = self.tokens(b.tokens, safe)
            if isinstance(self.tokens, PerVectorAdapter):
                m = b.mask.bool().repeat_interleave(self.tokens.config.m, dim=1)
            else:  # a Q-Former's k queries, for every item that shows any token
                m = b.mask.bool().any(1, keepdim=True).expand(-1, y.shape[1])
            parts.append(y)
            masks.append(m)
        if not parts:
            raise UavError("this batch shows the adapter nothing it reads",
                           "give a pooled read-out to a pooled adapter, or token vectors to a tokens adapter")
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def describe(self) -> dict:
        """Both branches' descriptions (saved as uav_adapter.json; :func:`adapter_from_description` rebuilds it)."""
        return {"pooled": self.pooled.describe() if self.pooled is not None else None,
                "tokens": self.tokens.describe() if self.tokens is not None else None}

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def kind(self) -> str:
        """E.g. "mlp", "pervector" or "mlp+pervector": what the reports call the adapter."""
        return "+".join(a.config.kind for a in (self.pooled, self.tokens) if a is not None)


def adapter_from_description(desc: dict) -> InputAdapter:
    """Rebuild a run's adapter (random weights) from :meth:`InputAdapter.describe` output. A description of one
    adapter without branches ({"config", "d_in", …}) is the pooled branch."""
    if "config" in desc:
        return InputAdapter(_from_description(desc), None)
    return InputAdapter(*(_from_description(desc[k]) if desc.get(k) else None for k in ("pooled", "tokens")))
