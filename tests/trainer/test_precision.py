"""Mixed precision for training (TrainConfig.precision): bf16 autocast with the frozen decoder in bf16, the adapter
and LoRA weights (the optimizer's) in fp32; the setting's identity rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer_kit import cfg_for, metrics
from uav_cache.errors import UavError
from uav_train.stream import ItemStream
from uav_cache.device import resolve_precision
from uav_train.trainer import TrainConfig, Trainer, train


@pytest.fixture
def bf16_units(monkeypatch):
    """Every device counts as having bf16 matrix units, so the bf16 path is tested on any CPU (tiny models)."""
    from uav_cache import device as dev

    monkeypatch.setattr(dev, "native_bf16", lambda d: True)
    return monkeypatch


def test_bf16_only_where_the_device_multiplies_bf16_in_hardware(monkeypatch):
    """auto: bf16 on a GPU with bf16 units, fp32 on a CPU. bf16: only where the device has bf16 units; on a CPU
    without AVX-512/AMX a bf16 matmul runs ~100× slower than fp32 (native_bf16's docstring), so fp32 there."""
    from uav_cache import device as dev

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("bf16", cpu) == ("bf16" if dev.native_bf16(cpu) else "fp32")  # this machine
    for units in (True, False):
        monkeypatch.setattr(dev, "native_bf16", lambda d, units=units: units)
        assert resolve_precision("auto", gpu) == ("bf16" if units else "fp32")
        assert resolve_precision("auto", cpu) == "fp32"
        assert resolve_precision("bf16", cpu) == resolve_precision("bf16", gpu) == ("bf16" if units else "fp32")
        assert resolve_precision("fp32", gpu) == "fp32"


def test_bf16_keeps_the_trained_weights_fp32_and_the_loss_close(tmp_path, stores, tiny_llama_dir, bf16_units):  # noqa: F811
    from uav_cache.store import Store

    batch = next(ItemStream([Store(stores["a"])], "train", seed=0).batches(4))
    losses, seen = {}, {}
    for precision in ("fp32", "bf16"):
        tr = Trainer(cfg_for(stores, tiny_llama_dir, tmp_path / precision, stage="2", device="cpu", precision=precision))
        torch.manual_seed(1)
        tr._add_lora()
        seen[precision] = {n: p.dtype for n, p in tr.model.named_parameters()}
        inside = {}
        hook = tr.model.get_base_model().model.layers[0].mlp.down_proj.base_layer.register_forward_hook(
            lambda m, i, o: inside.setdefault("dtype", o.dtype) and None)
        losses[precision] = float(tr.loss(batch, "qa"))
        hook.remove()
        seen[precision]["matmul"] = inside["dtype"]
        assert all(p.dtype == torch.float32 for p in tr.adapter.parameters())
        assert tr.lora_params() and all(p.dtype == torch.float32 for p in tr.lora_params().values())
    assert seen["fp32"]["matmul"] == torch.float32 and seen["bf16"]["matmul"] == torch.bfloat16  # autocast is on
    frozen = [n for n in seen["bf16"] if n != "matmul" and "lora_" not in n]
    assert frozen and all(seen["bf16"][n] == torch.bfloat16 for n in frozen)  # the frozen decoder: half the bytes
    assert all(seen["fp32"][n] == torch.float32 for n in frozen)
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"], losses


def test_a_bf16_run_trains_and_saves_fp32_weights(tmp_path, stores, tiny_llama_dir, bf16_units):  # noqa: F811
    from safetensors.torch import load_file

    run = train(cfg_for(stores, tiny_llama_dir, tmp_path / "run", precision="bf16", device="cpu"))
    rows = metrics(run)
    assert len(rows) == 7 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    for f in ("adapter.safetensors", "lora/adapter_model.safetensors"):
        assert all(v.dtype == torch.float32 for v in load_file(str(run / f)).values())
    # evaluation loads the decoder as it trained (bf16) where bf16 has hardware, the same weights in fp32 elsewhere,
    # and answers
    from uav_cache import device as dev
    from uav_eval.protocol import EvalConfig, evaluate
    from uav_train.run import load_run

    for units, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        bf16_units.setattr(dev, "native_bf16", lambda d, units=units: units)
        assert next(load_run(run).model.get_base_model().parameters()).dtype == dtype
    res = evaluate(EvalConfig(run=str(run), methods=["uav", "shuffled"], limit=2, similarity=False, n_boot=10,
                              progress=False, probe=False))
    assert res.n_items > 0 and all(isinstance(r["score"], float) for r in res.items if r["method"] == "uav")


def test_precision_is_identity_but_auto_and_sharding_are_not(tmp_path, stores, tiny_llama_dir):  # noqa: F811
    cfg = cfg_for(stores, tiny_llama_dir, tmp_path / "run")
    assert "precision" not in cfg.identity() and "sharding" not in cfg.identity()  # runs from before still resume
    assert dataclasses.replace(cfg, sharding="fsdp").identity() == cfg.identity()
    assert dataclasses.replace(cfg, precision="bf16").identity()["precision"] == "bf16"


@pytest.mark.parametrize("settings, problem", [({"precision": "fp16"}, "unknown precision 'fp16'"),
                                               ({"sharding": "zero3"}, "unknown sharding 'zero3'")])
def test_unknown_precision_or_sharding_is_refused(settings, problem, tmp_path, stores):  # noqa: F811
    with pytest.raises(UavError, match=problem):
        TrainConfig.from_dict({"stores": [stores["a"]], "out": str(tmp_path / "run"), **settings})
