"""Training end to end on tiny models and stores: both stages, warm start, transfer, no-LoRA, resume, the stream."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_run, assert_same_tensors
import torch
from safetensors.torch import load_file

from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.store import Store
from uav_train import stream as stream_mod
from uav_train.run import load_adapter, load_run
from uav_train.stream import ItemStream
from uav_train.trainer import LoraSettings, TrainConfig, Trainer, train

LABELS = ["red", "green", "blue"]
MLP = {"k": 2, "hidden": 32}
QFORMER = {"k": 4, "n_ctx": 2, "layers": 1, "heads": 2}


def split_of(i: int) -> str:
    return "train" if i % 6 < 4 else ("val" if i % 6 == 4 else "test")  # interleaved: chunks mix splits


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "colours.jsonl"
    nouns = ["cat", "dog", "car", "hat"]
    with p.open("w") as f:
        for i in range(48):
            lab = LABELS[i % 3]
            f.write(json.dumps({"id": f"ex{i:02d}", "text": f"The {nouns[i % 4]} is {lab}, number {i}.",
                                "label": lab, "task": "classification", "source": "toy", "split": split_of(i),
                                "qa": [{"question": "What colour is it?", "answer": lab}]}) + "\n")
    return p


def _harvest(donor: Path, data: Path, out: Path, **kw) -> str:
    harvest(HarvestConfig(donor=str(donor), data=str(data), out=str(out), shard_rows=16, chunk_rows=8,
                          progress=False, **{"layers": [1], **kw}))
    return str(out)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_llama_dir, tiny_gemma_dir, data) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stores")
    return {
        "a": _harvest(tiny_llama_dir, data, root / "llama"),
        "b": _harvest(tiny_gemma_dir, data, root / "gemma"),  # donor B
        "seq": _harvest(tiny_llama_dir, data, root / "llama_seq", layers=[1, 2], positions="all"),
    }


def cfg_for(st: dict[str, str], decoder, out, **kw) -> TrainConfig:
    """The small standard run on store A (llama donor, layer 1); keyword arguments override fields."""
    base = dict(stores=[st["a"]], out=str(out), decoder=str(decoder), adapter="mlp", adapter_options=dict(MLP),
                stage1_steps=3, steps=4, batch_size=4, eval_every=2, val_items=8, checkpoint_every=1,
                progress=False)
    return TrainConfig(**{**base, **kw})


def train_spy(cfg: TrainConfig, on_step=None) -> dict:
    """Train, recording the adapter weights and the trainable decoder parameters at the start of each stage."""
    seen: dict = {}
    orig = Trainer._stage

    def spy(self, stage, steps):
        seen[stage] = {"adapter": {k: v.detach().clone() for k, v in self.adapter.state_dict().items()},
                       "decoder_trainable": sorted(n for n, p in self.model.named_parameters() if p.requires_grad)}
        return orig(self, stage, steps)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_stage", spy)
        train(cfg, on_step=on_step)
    return seen


def all_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def metrics(run: Path) -> list[dict]:
    """Training-step rows (the step-0 rows hold only the baseline validation loss)."""
    return [r for r in all_metrics(run) if "loss" in r]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, stores, tiny_llama_dir):
    out = tmp_path_factory.mktemp("runs") / "a"
    seen = train_spy(cfg_for(stores, tiny_llama_dir, out))
    return out, seen


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


# ---------------------------------------------------------------------------------------------- resume

def interrupt_at(stage: int, step: int):
    def on_step(s, k, _loss):
        if (s, k) == (stage, step):
            raise KeyboardInterrupt
    return on_step


@pytest.mark.parametrize("stage,step,every", [(1, 2, 1), (2, 2, 1), (2, 1, 100)],
                         ids=["stage1", "stage2", "stage2-before-first-checkpoint"])
def test_resume_equals_uninterrupted(stage, step, every, tmp_path, run_a, stores, tiny_llama_dir):
    """Kill (KeyboardInterrupt from on_step) and re-run the same command: the result is bit-identical to run A.
    checkpoint_every is not part of a run's identity, so run A (checkpointing every step) is the reference."""
    ref, _ = run_a
    run = tmp_path / f"resumed{stage}"
    cfg = cfg_for(stores, tiny_llama_dir, run, checkpoint_every=every)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=interrupt_at(stage, step))
    doc = json.loads((run / "config.json").read_text())
    assert doc["status"] == "training"
    if every == 1:
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        assert (state["stage"], state["step"], state["consumed"]) == (stage, step - 1, 4 * (step - 1))
    else:
        assert not (run / "checkpoint").exists() and (run / "stage1" / "adapter.safetensors").exists()
    assert not (run / "adapter.safetensors").exists()

    # a changed setting is refused, and leaves the interrupted run resumable
    with pytest.raises(UavError, match="lr_adapter"):
        train(dataclasses.replace(cfg, lr_adapter=1e-3))

    train(cfg)
    assert_same_run(ref, run)


def test_changed_config_on_a_finished_run_is_refused(run_a, stores, tiny_llama_dir):
    run, _ = run_a
    with pytest.raises(UavError, match="different settings"):
        train(cfg_for(stores, tiny_llama_dir, run, steps=5))


def test_a_run_on_a_re_harvested_store_is_not_done(tmp_path, stores, tiny_llama_dir, data, monkeypatch):
    """"Already complete" compares what the stores hold, not their paths: other data harvested into the same
    folder makes the old run stale, and it is refused (not silently kept, not silently retrained)."""
    shutil.copytree(stores["a"], tmp_path / "st_x")
    monkeypatch.chdir(tmp_path)
    cfg = cfg_for(stores, tiny_llama_dir, "run", stores=["st_x"], stage1_steps=1, steps=1)
    train(cfg)
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["stores"][0]
    assert rec["path"] == "st_x" and rec["abspath"] == str((tmp_path / "st_x").resolve())
    before = (tmp_path / "run" / "adapter.safetensors").stat().st_mtime_ns
    assert train(cfg) == Path("run")  # unchanged store: a no-op
    shutil.rmtree(tmp_path / "st_x")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))
    _harvest(tiny_llama_dir, other, tmp_path / "st_x")
    with pytest.raises(UavError, match="trained on other data.*dataset_fingerprint"):
        train(cfg)
    assert (tmp_path / "run" / "adapter.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("settings, problem", [
    ({"no_lora": "false"}, "no_lora = 'false' must be true or false"),
    ({"steps": "ten"}, "steps = 'ten' must be an integer"),
    ({"batch_size": 2.5}, "batch_size = 2.5 must be an integer"),
    ({"lora": "big"}, "lora = 'big' must be a table"),
    ({"lora": {"rank": 4}}, "unknown LoRA setting(s) ['rank']"),
    ({"lora": {"r": "8"}}, "r = '8' must be an integer"),
    ({"stage": 2}, "stage = 2 must be a string"),
    ({"stores": [1]}, "must be a list of strings"),
    ({"adapter_options": {"k": "8"}}, "k = '8' must be an integer"),
])
def test_settings_of_the_wrong_type_are_refused(settings, problem, tmp_path, stores, tiny_llama_dir):
    """Recipe values are checked against the dataclass annotations: "false" is not false, 2 is not "2"."""
    with pytest.raises(UavError) as e:
        TrainConfig.from_dict({"stores": [stores["a"]], "out": str(tmp_path / "run"), **settings})
    assert problem in e.value.problem


@pytest.mark.parametrize("settings, problem", [
    ({"stage1_steps": 0, "steps": 0}, "stage1_steps must be ≥ 1, got 0"),
    ({"stage": "2", "steps": 0}, "steps must be ≥ 1, got 0"),
    ({"stage": "3"}, 'stage must be "1", "2" or "both"'),
    ({"batch_size": -1}, "batch_size must be ≥ 1, got -1"),
    ({"batch_size": 0}, "batch_size must be ≥ 1, got 0"),
    ({"lr_lora": 0.0}, "lr_lora must be > 0"),
    ({"eval_every": 0}, "eval_every must be ≥ 1"),
    ({"yesno": -1.0}, "yesno must be ≥ 0"),
    ({"init_from": "runs/a", "frozen_decoder": "runs/b", "stage": "2"}, "cannot also load a frozen_decoder"),
    ({"lora": LoraSettings(r=0)}, "lora.r must be ≥ 1"),
    ({"device": "foo"}, "unknown device 'foo'"),
    ({"device": "cuda:7"}, "device 'cuda:7' is not available on this machine"),
])
def test_settings_that_train_nothing_or_crash_are_refused_before_writing(settings, problem, tmp_path, stores,
                                                                         tiny_llama_dir):
    """Each would otherwise end "run complete" untrained, or crash mid-run leaving config.json at "training"."""
    cfg = cfg_for(stores, tiny_llama_dir, tmp_path / "run", **settings)
    with pytest.raises(UavError) as e:
        train(cfg)  # built directly: train() checks
    assert problem in e.value.problem
    with pytest.raises(UavError):  # and so does from_dict (recipes, the CLI)
        TrainConfig.from_dict(dataclasses.asdict(cfg))
    assert not (tmp_path / "run").exists()


def test_recipe_sections_are_checked(tmp_path, stores, tiny_llama_dir):
    p = tmp_path / "r.toml"
    p.write_text(f'[trian]\nsteps = 1\n[train]\nstores = ["{stores["a"]}"]\n')
    with pytest.raises(UavError, match=r"unknown section\(s\) \['trian'\]"):
        TrainConfig.from_recipe(p)
    p.write_text('[train]\nsteps = 3\n[train.lora]\nrank = 4\n')
    with pytest.raises(UavError, match=r"unknown LoRA setting\(s\) \['rank'\]"):
        TrainConfig.from_recipe(p)
    p.write_text('[train]\nsteps = 3\nstage = "2"\n[train.lora]\nr = 4\n')
    cfg = TrainConfig.from_recipe(p, batch_size=2)
    assert cfg.steps == 3 and cfg.lora.r == 4 and cfg.batch_size == 2


# ---------------------------------------------------------------------------------------------- stores

def test_mismatched_and_missing_stores(tmp_path, stores, tiny_llama_dir):
    with pytest.raises(UavError, match="does not match"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "mix", stores=[stores["a"], stores["b"]]))
    with pytest.raises(UavError, match="not found"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "missing", stores=[stores["a"], str(tmp_path / "nope")]))
    with pytest.raises(UavError, match="no --store"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "none", stores=[]))
    with pytest.raises(UavError, match="unknown adapter"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "bad", adapter="nope"))
    # same donor, but the first store's layers are not all in the second: refused up front
    with pytest.raises(UavError, match="not in store"):
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "layers", stores=[stores["seq"], stores["a"]]))
    with pytest.raises(UavError, match="pooled read-outs only"):  # every store needs token vectors for token_layers
        train(cfg_for(stores, tiny_llama_dir, tmp_path / "pos", stores=[stores["seq"], stores["a"]],
                      token_layers=["model.layers.1"], layers=["model.layers.1"]))
    for name in ("mix", "missing", "none", "bad", "layers", "pos"):
        assert not (tmp_path / name).exists(), name  # refused before anything is written


def rows_of(stream: ItemStream) -> list[int]:
    return [it.row for it in stream]


def test_stream_order_is_deterministic_per_seed(stores):
    st = Store(stores["a"])
    train_rows = sorted(int(r) for r in st.split_rows("train"))
    assert len(train_rows) == 32 and all(split_of(r) == "train" for r in train_rows)
    a = rows_of(ItemStream([st], "train", seed=3, epochs=1, shuffle_buffer=4))
    b = rows_of(ItemStream([st], "train", seed=3, epochs=1, shuffle_buffer=4))
    c = rows_of(ItemStream([st], "train", seed=4, epochs=1, shuffle_buffer=4))
    assert a == b and a != c
    assert sorted(a) == sorted(c) == train_rows  # each epoch is a permutation of the split
    assert a != train_rows  # shuffled
    two = rows_of(ItemStream([st], "train", seed=3, epochs=2, shuffle_buffer=4))
    assert two[:32] == a and sorted(two[32:]) == train_rows and two[32:] != a  # a new order per epoch
    # resuming mid-stream skips exactly the consumed items
    full = [it.row for batch in ItemStream([st], "train", seed=3, epochs=1).batches(5) for it in batch]
    rest = [it.row for batch in ItemStream([st], "train", seed=3, epochs=1).batches(5, skip=10) for it in batch]
    assert rest == full[10:]
    # items carry their question/answer and the right activations
    item = next(iter(ItemStream([st], "train", seed=0, epochs=1)))
    ex = st.examples()[item.row]
    assert (item.question, item.answer, item.text) == ("What colour is it?", ex["label"], ex["text"])
    assert item.x.pooled.shape == (1, 32) and item.x.tokens is None and item.kind == "open"
    assert torch.equal(item.x.pooled[0], st.read_last(st.layers[0], item.row, item.row + 1)[0])
    text = next(iter(ItemStream([st], "val", mode="text", epochs=1)))
    assert text.answer == st.examples()[text.row]["text"] and split_of(text.row) == "val"


def test_stream_ranks_split_each_global_batch(stores):
    """Two ranks see, step by step, exactly the global batch one process sees, split between them."""
    st = Store(stores["a"])
    one = [[it.row for it in b] for b in ItemStream([st], "train", seed=1, epochs=1).batches(4)]
    r0, r1 = ([[it.row for it in b] for b in ItemStream([st], "train", seed=1, epochs=1, rank=r, world=2).batches(4)]
              for r in (0, 1))
    assert len(one) == len(r0) == len(r1) > 1
    for g, a, b in zip(one, r0, r1):
        assert a == g[0::2] and b == g[1::2] and not set(a) & set(b)
    assert sorted(sum(r0 + r1, [])) == sorted(int(r) for r in st.split_rows("train"))
    # two stores: items from both, tagged with their store
    both = list(ItemStream([st, Store(stores["seq"])], "test", epochs=1))
    assert {it.store for it in both} == {0, 1} and len(both) == 2 * 8


def test_length_grouped_batches_pad_less_and_resume_exactly(stores):
    """groups = G: each pool of G batches holds the same items as G plain batches, cut by length (the padding a
    batch pays falls), in a fixed order, and a resume after any whole batch continues exactly."""
    st = Store(stores["a"])
    length = lambda it: it.row % 5  # noqa: E731  (any key: the test store's items all have one length)
    plain = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(4)]
    grouped = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(4, groups=4,
                                                                                                 length=length)]
    assert len(grouped) == len(plain) == 16
    for p in range(0, 16, 4):  # pool by pool: the same items, each batch all one length bucket or sorted runs
        assert sorted(sum(grouped[p:p + 4], [])) == sorted(sum(plain[p:p + 4], []))
    spread = lambda bs: sum(max(r % 5 for r in b) * len(b) - sum(r % 5 for r in b) for b in bs)  # noqa: E731
    assert spread(grouped) < spread(plain) / 2  # padding the batches pay
    assert grouped != plain and sum(grouped, []) != sum(plain, [])
    again = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(4, groups=4,
                                                                                               length=length)]
    assert again == grouped  # deterministic
    for k in (1, 4, 6):  # resume after k whole batches: mid-pool and at a pool boundary
        rest = [[it.row for it in b] for b in ItemStream([st], "train", seed=2, epochs=2).batches(
            4, skip=4 * k, groups=4, length=length)]
        assert rest == grouped[k:]


def test_stream_buffer_is_bounded(stores, monkeypatch):
    """The producer reads a chunk only once the items in flight fit in shuffle_buffer (+ the queue)."""
    st = Store(stores["a"])
    buffer, prefetch = 3, 1
    log: list[tuple[int, int]] = []  # (rows read before this read, items yielded so far)
    read = {"rows": 0}
    orig = stream_mod.read_rows
    s = ItemStream([st], "train", seed=0, epochs=1, shuffle_buffer=buffer, prefetch=prefetch)

    def counting(store, rows, spec, **kw):
        log.append((read["rows"], s.seen))
        read["rows"] += len(rows)
        return orig(store, rows, spec, **kw)

    monkeypatch.setattr(stream_mod, "read_rows", counting)
    chunk = max(len(rows) for _, rows in s.chunks)
    assert len(s.chunks) >= 4 and chunk <= 8
    got = []
    for it in s:
        got.append(it.row)
    assert len(got) == 32 and read["rows"] == 32 and len(log) == len(s.chunks)
    for before, seen in log:
        # in the shuffle buffer ≤ buffer, in the queue ≤ prefetch, handed over but not yet yielded ≤ 1
        assert before - seen <= buffer + prefetch + 1, log
    # and the count is live: once the buffer has filled, exactly `buffer` items wait in it at each read
    assert max(before - seen for before, seen in log) >= buffer
