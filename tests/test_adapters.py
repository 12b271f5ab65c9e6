"""Adapters: shapes, gradients, parameter counts, scale matching, masking, save/load, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from uav_cache.errors import UavError
from uav_cache.models import embedding_norm, load, resolve
from uav_train.adapters import (AdapterInput, AffineAdapter, InputAdapter, LowRankAdapter, PerVectorAdapter,
                                adapter_config, adapter_from_description, build_adapter)
from uav_train.run import load_adapter, save_adapter

D_IN, D_OUT = 24, 32
OPTIONS = {
    "mlp": {"k": 2, "hidden": 32},
    "qformer": {"k": 4, "n_ctx": 2, "layers": 1, "heads": 2, "dropout": 0.0},
    "affine": {},
    "lowrank": {"rank": 4},
}


@pytest.fixture(scope="module")
def out_norm(tiny_llama_dir) -> float:
    model, _ = load(resolve(str(tiny_llama_dir)))
    n = embedding_norm(model)
    assert n > 0 and abs(n - 1.0) > 1e-3  # a scale an adapter would not hit by accident
    return n


def make(kind: str, n_layers: int, out_norm: float, d_in: int = D_IN, d_out: int = D_OUT, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_adapter(adapter_config(kind, **{**OPTIONS[kind], **extra}), d_in, n_layers, d_out, out_norm).eval()


def expected_k(kind: str, n_layers: int) -> int:
    return {"mlp": 2, "qformer": 4}.get(kind, n_layers)  # affine/lowrank: one soft token per stored layer


def inputs(b: int, s: int, n_layers: int, d_in: int = D_IN, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, n_layers, d_in, generator=g) + 0.3
    mask = torch.ones(b, s, dtype=torch.bool)
    if s > 1:
        mask[0, s // 2:] = False  # padded row
        x[0, s // 2:] = 0.0  # what stack_x writes at padding
    return x, mask


@pytest.mark.parametrize("kind", list(OPTIONS))
@pytest.mark.parametrize("s,n_layers", [(1, 1), (5, 2)])
def test_output_shape_and_scale(kind, s, n_layers, out_norm):
    a = make(kind, n_layers, out_norm)
    x, mask = inputs(3, s, n_layers)
    y = a(x, mask)
    k = expected_k(kind, n_layers)
    assert a.k == k
    assert y.shape == (3, k, D_OUT) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # at init every soft token sits on the decoder's own embedding scale
    torch.testing.assert_close(y.norm(dim=-1), torch.full((3, k), out_norm), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_output_independent_of_input_scale(kind, out_norm):
    """Donor activations may sit at 1e-3 or at 1e5 (Gemma): the adapters normalise them away."""
    a = make(kind, 2, out_norm)
    x, mask = inputs(3, 4, 2)
    ref = a(x, mask)
    for scale in (1e-3, 1e5):
        torch.testing.assert_close(a(x * scale, mask), ref, rtol=1e-4, atol=1e-4 * out_norm)
    # and the inputs do matter
    x2, _ = inputs(3, 4, 2, seed=7)
    assert not torch.allclose(a(x2, mask), ref, atol=1e-3)


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_gradients_reach_every_trainable_parameter(kind, out_norm):
    a = make(kind, 2, out_norm).train()
    if kind == "lowrank":  # up starts at zero, which zeroes down's gradient: perturb it to see both
        with torch.no_grad():
            a.up.weight.normal_(0, 0.1)
    x, mask = inputs(3, 4, 2)
    target = torch.randn(3, a.k, D_OUT, generator=torch.Generator().manual_seed(3))
    ((a(x, mask) - target) ** 2).sum().backward()
    trainable = [(n, p) for n, p in a.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None, f"{kind}: no gradient for {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{kind}: zero gradient for {name}"


def test_affine_parameter_counts(out_norm):
    same = make("affine", 1, out_norm, d_in=D_OUT)
    assert isinstance(same, AffineAdapter)
    assert same.n_trainable() == D_OUT + 1
    assert not hasattr(same, "fixed_proj") and same.proj is None
    for d_in in (16, 48):  # narrower and wider donors
        fixed = make("affine", 1, out_norm, d_in=d_in)
        assert fixed.n_trainable() == D_OUT + 1  # the fixed projection adds no parameters
        assert fixed.fixed_proj.shape == (D_OUT, d_in)
        p = fixed.fixed_proj
        gram = p @ p.T if d_in > D_OUT else p.T @ p  # orthonormal rows / columns
        torch.testing.assert_close(gram, torch.eye(min(d_in, D_OUT)), atol=1e-5, rtol=0)
        x, mask = inputs(2, 1, 1, d_in=d_in)
        assert fixed(x, mask).shape == (2, 1, D_OUT)
        learned = make("affine", 1, out_norm, d_in=d_in, projection="learned")
        assert learned.n_trainable() == D_OUT + 1 + D_OUT * d_in
    with pytest.raises(UavError, match="projection"):
        make("affine", 1, out_norm, projection="bogus")


def test_lowrank_starts_equal_to_affine(out_norm):
    x, mask = inputs(3, 4, 2)
    for d_in in (D_IN, D_OUT):
        aff = make("affine", 2, out_norm, d_in=d_in, seed=0)
        low = make("lowrank", 2, out_norm, d_in=d_in, seed=5)  # a different torch seed: only `up` = 0 matters
        assert isinstance(low, LowRankAdapter)
        assert torch.count_nonzero(low.up.weight) == 0 and torch.count_nonzero(low.down.weight) > 0
        xi = x if d_in == D_IN else torch.randn(3, 4, 2, d_in)
        torch.testing.assert_close(low(xi, mask), aff(xi, mask), rtol=0, atol=1e-6)
        assert low.n_trainable() == aff.n_trainable() + 2 * 4 * D_OUT


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_padding_does_not_influence_output(kind, out_norm):
    a = make(kind, 2, out_norm)
    x, mask = inputs(3, 6, 2)
    ref = a(x, mask)
    noisy = x.clone()
    noisy[0, 3:] = torch.randn(3, 2, D_IN) * 50  # garbage where the mask says padding
    out = a(noisy, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # a real token changing does change the output
    moved = x.clone()
    moved[0, 1] = torch.randn(2, D_IN) * 3
    assert not torch.allclose(a(moved, mask)[0], ref[0], atol=1e-4)
    # and the padded row equals the same row given alone without padding
    alone = a(x[:1, :3], mask[:1, :3])
    torch.testing.assert_close(alone[0], ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_save_load_round_trip(kind, out_norm, tmp_path):
    a = make(kind, 2, out_norm, **({"dropout": 0.0} if kind == "mlp" else {}))
    with torch.no_grad():  # move off the init so a fresh rebuild could not match by chance
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, mask = inputs(3, 4, 2)
    ref = a(x, mask)
    run = tmp_path / "run"
    save_adapter(run, InputAdapter(a, None), {"stage": 2})
    (run / "other.txt").write_text("kept")
    save_adapter(run, InputAdapter(a, None))  # saving again into an existing folder keeps the other files
    assert (run / "other.txt").read_text() == "kept"
    b, desc = load_adapter(run)
    assert type(b.pooled) is type(a) and b.tokens is None and desc["n_trainable"] == a.n_trainable()
    assert desc["pooled"]["config"]["kind"] == kind and b.kind == kind
    b.eval()
    assert torch.equal(b.pooled(x, mask), ref)
    for (n1, t1), (n2, t2) in zip(a.state_dict().items(), b.pooled.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    # a run written before the tokens branch (one adapter, its keys unprefixed) loads as the pooled branch
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(old / "adapter.safetensors"))
    (old / "uav_adapter.json").write_text(json.dumps(a.describe()))
    c, _ = load_adapter(old)
    assert torch.equal(c.eval().pooled(x, mask), ref)
    fresh = adapter_from_description(a.describe()).pooled.eval()
    if kind != "affine":  # the affine adapter's init is deterministic; the others are random
        assert not torch.equal(fresh(x, mask), ref)
    with pytest.raises(UavError, match="no adapter"):
        load_adapter(tmp_path / "nowhere")


def test_unknown_adapter_or_option_is_refused():
    with pytest.raises(UavError, match="unknown adapter") as e:
        adapter_config("transformer-xl")
    assert "mlp" in e.value.fix and "qformer" in e.value.fix
    with pytest.raises(UavError, match="no option") as e:
        adapter_config("mlp", k=2, n_ctx=4)
    assert "hidden" in e.value.fix
    with pytest.raises(UavError, match="no option"):
        adapter_config("affine", k=3)  # affine has one token per layer, no k
    with pytest.raises(UavError, match="divisible"):
        build_adapter(adapter_config("qformer", k=2, heads=5), D_IN, 1, D_OUT, 1.0)
    assert adapter_config("lowrank", rank=2).rank == 2


# ---------------------------------------------------------------------------------------------- token inputs


def test_pervector_gives_m_soft_tokens_per_vector_and_each_depends_on_its_own_vector_only():
    a = build_adapter(adapter_config("pervector", m=2, hidden=16), D_IN, 2, D_OUT, 1.5).eval()
    x = torch.randn(2, 5, 2, D_IN)
    mask = torch.ones(2, 5, dtype=torch.bool)
    y = a(x, mask)
    assert y.shape == (2, 10, D_OUT)
    assert torch.allclose(y.norm(dim=-1), torch.full((2, 10), 1.5), atol=1e-4)  # the decoder's embedding scale
    x2 = x.clone()
    x2[0, 3] += 1.0  # change token 3 of item 0: only its two soft tokens move
    d = (a(x2, mask) - y).abs().sum(-1)
    assert (d[0, 6:8] > 1e-4).all() and d[0, :6].max() < 1e-6 and d[0, 8:].max() < 1e-6 and d[1].max() < 1e-6


def test_pervector_warm_start_fits_a_linear_map_in_closed_form():
    a = build_adapter(adapter_config("pervector", hidden=16), D_IN, 1, D_OUT, 1.0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D_IN, D_OUT, generator=g)
    x = torch.randn(400, 1, D_IN, generator=g)
    v = a.features(x.unsqueeze(0))[0]
    r2 = a.warm_start(v, v @ w, ridge=1e-6)
    assert r2 > 0.999
    assert torch.allclose(a.skip(v), v @ w, atol=1e-3)


def test_input_adapter_masks_what_each_item_shows():
    """Items of one batch show different things: read-out only, a 3-token window, both. The soft-token mask marks,
    per item, exactly the soft tokens it has, in [pooled k][tokens] order; a tokens-only item does not NaN."""
    pooled = build_adapter(adapter_config("mlp", k=2, hidden=16), D_IN, 1, D_OUT, 1.0)
    for kind, per in (("pervector", 1), ("qformer", None)):
        opts = {"m": 1, "hidden": 16} if kind == "pervector" else {"k": 3, "n_ctx": 1, "layers": 1, "heads": 2, "dropout": 0.0}
        ia = InputAdapter(pooled, build_adapter(adapter_config(kind, **opts), D_IN, 2, D_OUT, 1.0)).eval()
        x = AdapterInput(pooled=torch.randn(3, 1, D_IN), has_pooled=torch.tensor([True, False, True]),
                         tokens=torch.randn(3, 4, 2, D_IN),
                         mask=torch.tensor([[False] * 4, [True] * 3 + [False], [True] * 4]))
        soft, m = ia(x)
        assert torch.isfinite(soft).all()
        n = m.sum(1).tolist()
        assert n == ([2, 3, 6] if per else [2, 3, 5]), kind
        assert m[0, :2].all() and not m[1, :2].any()
        d = ia.describe()
        assert adapter_from_description(d).kind == f"mlp+{kind}" and d["tokens"]["config"]["kind"] == kind
    with pytest.raises(UavError, match="pooled branch, a tokens branch or both"):
        InputAdapter(None, None)
