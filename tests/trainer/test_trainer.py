"""Training end to end on tiny models and stores: both stages, warm start, run files, transfer, frozen and no LoRA."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_tensors
import torch

from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_train.run import load_adapter, load_run
from uav_train.stream import ItemStream
from uav_train.trainer import LoraSettings, Trainer, train
from trainer_kit import MLP, QFORMER, all_metrics, cfg_for, metrics, tensors, train_spy


# ---------------------------------------------------------------------------------------------- end to end

def test_end_to_end_both_stages(run_a, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = run_a
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["status"] == "complete"
    assert cfg["trainable_params"]["adapter"] > 0 and cfg["trainable_params"]["lora"] > 0 and cfg["lora"] == "trained"
    assert [s["stage"] for s in cfg["summary"]] == [1, 2] and [s["steps"] for s in cfg["summary"]] == [3, 4]
    assert (run / "adapter.safetensors").exists() and (run / "stage1" / "adapter.safetensors").exists()
    acfg = json.loads((run / "uav_adapter.json").read_text())
    assert acfg["pooled"]["config"]["kind"] == "mlp" and acfg["pooled"]["config"]["k"] == 2 and acfg["stage"] == 2
    assert acfg["tokens"] is None
    assert not (run / "checkpoint").exists()  # deleted once complete
    assert (run / "loss.png").stat().st_size > 1000

    rows = metrics(run)
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (2, 4)]
    assert [r["step"] for r in rows if "val_loss" in r and r["stage"] == 1] == [2, 3]
    assert [r["step"] for r in rows if "val_loss" in r and r["stage"] == 2] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    baselines = [r for r in all_metrics(run) if r["step"] == 0]
    assert [r["stage"] for r in baselines] == [1, 2] and all(np.isfinite(r["val_loss"]) for r in baselines)
    assert all("lr_lora" not in r for r in rows if r["stage"] == 1)  # stage 1: adapter only
    assert all("lr_lora" in r for r in rows if r["stage"] == 2)

    # the LoRA loads with plain peft, holds the saved (trained, non-zero) weights and changes the output
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.tensor([[2, 50, 60, 70, 3]])
    with torch.no_grad():
        ref = base(ids).logits
    model = PeftModel.from_pretrained(base, str(run / "lora")).eval()
    saved = tensors(run / "lora" / "adapter_model.safetensors")
    assert saved and any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, ref)

    # load_run puts it all back together
    lr = load_run(run)
    assert lr.has_lora and lr.template.use_chat
    for k, v in tensors(run / "adapter.safetensors").items():
        assert torch.equal(lr.adapter.state_dict()[k], v)


def test_run_dir_has_no_file_peft_would_mistake_and_old_runs_still_load(run_a, tmp_path):
    """uav's adapter description is uav_adapter.json: an adapter_config.json at the run root is PEFT's name, and
    PeftModel.from_pretrained(base, RUN) would read it (KeyError 'peft_type'). Runs that have one still load."""
    run, _ = run_a
    assert not (run / "adapter_config.json").exists() and not (run / "stage1" / "adapter_config.json").exists()
    assert (run / "stage1" / "uav_adapter.json").exists()
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for d in (old, old / "stage1"):
        (d / "uav_adapter.json").rename(d / "adapter_config.json")
    adapter, desc = load_adapter(old)
    assert desc["pooled"]["config"]["kind"] == "mlp"
    for k, v in tensors(run / "adapter.safetensors").items():
        assert torch.equal(adapter.state_dict()[k], v)
    assert load_run(old).has_lora


def test_run_record_round_trips_config_json_and_loads_older_runs(run_a):
    """config.json is a RunRecord: it loads and writes back key for key; a run recorded before most keys existed
    loads with the documented fallbacks (None: unknown, never compared)."""
    from uav_train.run import RunRecord, StoreRecord

    run, _ = run_a
    doc = json.loads((run / "config.json").read_text())
    rec = RunRecord.load(run / "config.json")
    assert rec.to_dict() == doc and list(rec.to_dict()) == list(doc)
    assert list(rec.stores[0].to_dict()) == list(doc["stores"][0])
    assert rec.status == "complete" and rec.readout == doc["train"]["readout"]
    old = {"status": "complete", "train": {"decoder": doc["train"]["decoder"]}, "layers": doc["layers"],
           "stores": [{k: doc["stores"][0][k] for k in ("path", "donor", "layers", "d_model", "weights_fingerprint")}]}
    rec = RunRecord.from_dict({**old, "no_longer_known": 1})
    assert rec.readout == "last" and rec.lora is None and rec.identity is None
    spec = rec.input_spec()  # an older run reads the pooled read-out of its layers, nothing else
    assert spec.layers == tuple(doc["layers"]) and spec.readout == "last" and not spec.tokens
    assert spec.eval_form() == "pooled" and rec.adapter_kind == ""
    with pytest.raises(UavError, match="tokens = true"):
        RunRecord.from_dict({**old, "train": {**old["train"], "tokens": True}}).input_spec()
    assert rec.decoder_weights() == doc["decoder_fingerprint"]  # computed from the decoder for an older run
    st = rec.stores[0]
    assert st.abspath is None and st.donor_reading(77) == {"dtype": None, "donor_input": "raw", "max_length": 77}
    assert st.changes(StoreRecord.from_dict({**doc["stores"][0], "donor_input": "chat", "n_rows": 1})) == []


def test_run_files_are_as_readable_as_the_umask_allows(run_a):
    """safetensors writes 0600; run weights are meant to be shared (and the umask says how far)."""
    import os
    run, _ = run_a
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files) and any(p.suffix == ".safetensors" for p in files)
    bad = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in files
           if p.stat().st_mode & 0o777 != 0o666 & ~mask}
    assert not bad, bad


def test_disk_full_while_training_is_one_error_and_leaves_no_temp_files(tmp_path, stores, tiny_llama_dir,
                                                                        monkeypatch):
    from safetensors import SafetensorError

    from uav_train import run as run_mod

    real = run_mod.save_file
    calls = []

    def full_disk(tensors, path):
        calls.append(path)
        if len(calls) == 3:  # mid-checkpoint: some files of the temp folder are written, this one is torn
            Path(path).write_bytes(b"\0" * 1000)
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(tensors, path)

    monkeypatch.setattr(run_mod, "save_file", full_disk)
    cfg = cfg_for(stores, tiny_llama_dir, tmp_path / "run", stage1_steps=2, steps=2)
    with pytest.raises(UavError, match="cannot write .*No space left") as e:
        train(cfg)
    assert "re-run the same command" in e.value.fix
    assert [p.name for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name] == []
    monkeypatch.setattr(run_mod, "save_file", real)
    train(cfg)  # space freed: the same command resumes and completes
    assert json.loads((tmp_path / "run" / "config.json").read_text())["status"] == "complete"


def test_finished_run_is_a_noop(run_a, stores, tiny_llama_dir):
    run, _ = run_a
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert train(cfg_for(stores, tiny_llama_dir, run, progress=True)) == run  # progress is not identity
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_stage2_warm_starts_from_stage1(run_a):
    run, seen = run_a
    stage1 = tensors(run / "stage1" / "adapter.safetensors")
    # stage 2 began with exactly the stage-1 adapter…
    assert seen[2]["adapter"].keys() == stage1.keys()
    for k, v in stage1.items():
        assert torch.equal(seen[2]["adapter"][k], v), k
    # …which stage 1 did train (it is not the fresh initial adapter)
    assert any(not torch.equal(seen[1]["adapter"][k], v) for k, v in stage1.items())
    # and stage 2 trained it further
    final = tensors(run / "adapter.safetensors")
    assert any(not torch.equal(final[k], v) for k, v in stage1.items())
    assert seen[1]["decoder_trainable"] == [] and seen[2]["decoder_trainable"]
    assert all("lora_" in n for n in seen[2]["decoder_trainable"])


def test_training_decreases_the_loss(tmp_path, stores, tiny_llama_dir):
    """Stage 2 alone (fresh adapter) on three short answers, a few high-lr steps. The tiny random decoder's
    embeddings (norm ~0.1, tied to the LM head) cap its logits below 1, so no training could move its loss
    far from log(vocab); a copy with 6x larger embeddings has room to learn."""
    from transformers import AutoModelForCausalLM

    decoder = tmp_path / "decoder"
    shutil.copytree(tiny_llama_dir, decoder)
    model = AutoModelForCausalLM.from_pretrained(decoder)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(6.0)
    model.save_pretrained(decoder)
    run = tmp_path / "overfit"
    cfg = cfg_for(stores, decoder, run, stage="2", steps=12, lr_adapter=1e-2, lr_lora=1e-2, warmup=1,
                  eval_every=6, val_items=8, checkpoint_every=100)
    train(cfg)
    rows = metrics(run)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 12 and not (run / "stage1").exists()
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 1.0, losses
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < first - 1.0, (vals, first)


# ---------------------------------------------------------------------------------------------- variants

def test_adapter_only_transfer_with_frozen_decoder(tmp_path, run_a, stores, tiny_llama_dir, tiny_gemma_dir):
    run_a_dir, _ = run_a
    run = tmp_path / "b"
    cfg = cfg_for(stores, tiny_llama_dir, run, stores=[stores["b"]], frozen_decoder=str(run_a_dir), stage="2", steps=3)
    seen = train_spy(cfg)
    assert seen[2]["decoder_trainable"] == []  # the LoRA is loaded frozen: only the adapter trains
    assert_same_tensors(run_a_dir / "lora" / "adapter_model.safetensors", run / "lora" / "adapter_model.safetensors")
    final = tensors(run / "adapter.safetensors")
    assert any(not torch.equal(final[k], v) for k, v in seen[2]["adapter"].items())  # the adapter did train
    doc = json.loads((run / "config.json").read_text())
    assert doc["status"] == "complete" and doc["lora"].startswith("frozen from")
    assert doc["trainable_params"]["lora"] == 0 and doc["donor"] != json.loads((run_a_dir / "config.json").read_text())["donor"]
    assert all("lr_lora" not in r for r in metrics(run))
    # the same decoder is recognised by its weights, however it is spelled ("dir/" vs "dir")
    respelled = cfg_for(stores, tiny_llama_dir, tmp_path / "e", stores=[stores["b"]], frozen_decoder=str(run_a_dir),
                        stage="2", steps=1)
    respelled.decoder = str(tiny_llama_dir) + "/"
    assert json.loads((train(respelled) / "config.json").read_text())["decoder_fingerprint"] == doc["decoder_fingerprint"]
    # the frozen decoder must come from a finished run with the same decoder
    with pytest.raises(UavError, match="decoder"):
        train(cfg_for(stores, tiny_gemma_dir, tmp_path / "c", stores=[stores["b"]], frozen_decoder=str(run_a_dir),
                      stage="2"))
    with pytest.raises(UavError, match="not a uav run"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "d", stores=[stores["b"]], frozen_decoder=str(tmp_path / "no"),
                      stage="2"))


def test_a_frozen_lora_is_merged_and_gives_peft_s_loss(tmp_path, run_a, stores, tiny_llama_dir):
    """Adapter-only transfer folds the frozen LoRA into the decoder's weights (a cheaper step): the loss it trains
    on is the one through peft's LoRA layers."""
    from peft import PeftModel

    run_a_dir, _ = run_a
    cfg = cfg_for(stores, tiny_llama_dir, tmp_path / "b", stores=[stores["b"]], frozen_decoder=str(run_a_dir),
                  stage="2", steps=1)
    merged, through_peft = Trainer(cfg), Trainer(cfg)
    merged._add_lora()
    assert not any("lora_" in n for n, _ in merged.model.named_modules())
    through_peft.model = PeftModel.from_pretrained(through_peft.model, str(run_a_dir / "lora"), is_trainable=False)
    batch = [it for _, it in zip(range(4), ItemStream([Store(stores["b"])], "train", seed=0))]
    with torch.no_grad():
        torch.testing.assert_close(merged.loss(batch, "qa"), through_peft.loss(batch, "qa"), atol=1e-5, rtol=1e-5)
        with through_peft.model.disable_adapter():
            assert abs(float(merged.loss(batch, "qa")) - float(through_peft.loss(batch, "qa"))) > 1e-6


def test_merge_lora_off_keeps_peft_s_frozen_layers_in_training_and_after(tmp_path, run_a, stores, tiny_llama_dir):
    """merge_lora = false trains through peft's layers (the LoRA frozen, no gradient), and the run is then loaded
    unmerged by evaluation and `uav explain` (load_run(merge=None) follows the run); a default run loads merged."""
    run_a_dir, _ = run_a
    cfg = cfg_for(stores, tiny_llama_dir, tmp_path / "b", stores=[stores["b"]], frozen_decoder=str(run_a_dir),
                  stage="2", steps=1, merge_lora=False)
    t = Trainer(cfg)
    t._add_lora()
    frozen = [p for n, p in t.model.named_parameters() if "lora_" in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    run = train(cfg)
    assert json.loads((run / "config.json").read_text())["train"]["merge_lora"] is False
    assert not load_run(run, merge=None).merged and load_run(run, merge=True).merged
    assert load_run(run_a_dir, merge=None).merged  # the default: merged


def test_init_from_continues_another_runs_adapter_and_lora(tmp_path, run_a, stores, tiny_llama_dir):
    """A curriculum: run B starts where run A ended (its best adapter and LoRA, both training on), so B's first
    validation is A's best one; a run B could not have continued is refused before anything is written."""
    run_a_dir, _ = run_a
    run = tmp_path / "b"
    seen = train_spy(cfg_for(stores, tiny_llama_dir, run, init_from=str(run_a_dir), stage="2", steps=3))
    start = tensors(run_a_dir / "adapter.safetensors")
    assert start.keys() == seen[2]["adapter"].keys()
    assert all(torch.equal(start[k], v) for k, v in seen[2]["adapter"].items())  # A's adapter, not a fresh one
    assert any("lora_" in n for n in seen[2]["decoder_trainable"])  # A's LoRA, loaded to train on
    a_doc = json.loads((run_a_dir / "config.json").read_text())
    a_best = next(s["best_val"] for s in a_doc["summary"] if s.get("stage") == 2)
    assert all_metrics(run)[0]["step"] == 0 and all_metrics(run)[0]["val_loss"] == pytest.approx(a_best, rel=1e-5)
    lora_a = tensors(run_a_dir / "lora" / "adapter_model.safetensors")
    lora_b = tensors(run / "lora" / "adapter_model.safetensors")
    assert any(not torch.equal(lora_a[k], lora_b[k]) for k in lora_a)  # and it trained on
    doc = json.loads((run / "config.json").read_text())
    assert doc["status"] == "complete" and doc["train"]["init_from"] == str(run_a_dir) and doc["lora"] == "trained"

    refused = [
        (dict(stores=[stores["b"]]), "does not fit this run (donor:"),  # another donor's activations
        (dict(adapter_options={**MLP, "hidden": 8}), "adapter is not the one this run's settings build"),
        (dict(lora=LoraSettings(r=2)), "does not fit this run (lora:"),
        (dict(init_from=str(tmp_path / "nowhere")), "is not a uav run directory"),
    ]
    for kw, problem in refused:
        out = tmp_path / "refused"
        with pytest.raises(UavError) as e:
            train(cfg_for(stores, tiny_llama_dir, out, **{"init_from": str(run_a_dir), "stage": "2", **kw}))
        assert problem in e.value.problem, (kw, e.value.problem)
        assert not (out / "config.json").exists()
    with pytest.raises(UavError, match="cannot run stage 1"):
        cfg_for(stores, tiny_llama_dir, tmp_path / "r", init_from=str(run_a_dir), stage="both").validate()


def test_no_lora_leaves_the_decoder_untouched(tmp_path, stores, tiny_llama_dir, run_a):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "nolora"
    cfg = cfg_for(stores, tiny_llama_dir, run, no_lora=True, stage1_steps=2, steps=2, lr_adapter=1e-2)
    trainer = Trainer(cfg)
    trainer.fit()
    assert not (run / "lora").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    got = trainer.model.state_dict()
    assert got.keys() == base.keys()
    for k in base:
        assert torch.equal(got[k], base[k]), k
    doc = json.loads((run / "config.json").read_text())
    assert doc["status"] == "complete" and doc["lora"] is None and doc["trainable_params"]["lora"] == 0
    assert all("lr_lora" not in r for r in metrics(run))
    assert (run / "adapter.safetensors").exists()
    # a run without a LoRA cannot be a frozen decoder for transfer
    with pytest.raises(UavError, match="LoRA"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "t", frozen_decoder=str(run), stage="2"))


def test_sequence_store_with_qformer(tmp_path, stores, tiny_llama_dir):
    run = tmp_path / "seq"
    cfg = cfg_for(stores, tiny_llama_dir, run, stores=[stores["seq"]], adapter="none", token_adapter="qformer",
                  token_adapter_options=dict(QFORMER), token_layers=[1, 2], stage1_steps=2, steps=2)
    train(cfg)
    acfg = json.loads((run / "uav_adapter.json").read_text())
    assert acfg["pooled"] is None and acfg["tokens"]["n_layers"] == 2
    assert acfg["tokens"]["config"]["kind"] == "qformer" and acfg["tokens"]["config"]["k"] == 4
    assert all(np.isfinite(r["loss"]) for r in metrics(run)) and len(metrics(run)) == 4
    with pytest.raises(UavError, match="pooled read-outs only"):  # token_layers need a store with token vectors
        train(dataclasses.replace(cfg, stores=[stores["a"]], token_layers=[1], out=str(tmp_path / "x")))
    # a layer subset of a multi-layer store
    sub = tmp_path / "sub"
    train(cfg_for(stores, tiny_llama_dir, sub, stores=[stores["seq"]], adapter="affine", adapter_options={},
                  layers=["model.layers.2"], stage="1", stage1_steps=2))
    assert json.loads((sub / "uav_adapter.json").read_text())["pooled"]["n_layers"] == 1
    with pytest.raises(UavError, match="not in store"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "y", layers=["model.layers.2"], stage="1"))
