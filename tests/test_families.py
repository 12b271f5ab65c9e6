"""Every registered architecture without the hub: a tiny random model of each registry family (uav_cache/registry/*.toml)
goes through harvest → train (a few steps) → explain, with its block paths, LoRA targets and padding checked.

Families: llama (llama-8b, smollm2-135m; tiny Llama with a ChatML template, SmolLM2's), qwen3 (qwen3-4b), gemma3
(gemma3-4b/12b: the multimodal checkpoint class, vision tower included), gemma3_text (gemma3-270m), mistral
(mistral-7b), the Yi variant of llama (yi-34b, untied embeddings), and the bert encoder (minilm-l6) as a donor. The
real chat templates of Llama-3.1, Qwen3, Gemma-3 and Mistral are not available offline: those decoders are tested on
uav's no-template prompt (conftest.py says which tiny model has which tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.models import block_linears, block_modules, load, resolve
from uav_cache.store import Store
from uav_train.prompt import PromptTemplate
from uav_train.run import load_run
from uav_train.trainer import TrainConfig, Trainer, train

# fixture → (module path of block 1, the decoder's own chat template is used, the linears LoRA must wrap per block)
CAUSAL = {
    "tiny_llama_dir": ("model.layers.1", True, 7),
    "tiny_qwen3_dir": ("model.layers.1", False, 7),
    "tiny_gemma3_mm_dir": ("model.language_model.layers.1", False, 7),
    "tiny_gemma_dir": ("model.layers.1", False, 7),
    "tiny_mistral_dir": ("model.layers.1", False, 7),
    "tiny_yi_dir": ("model.layers.1", False, 7),
}
LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "colours.jsonl"
    nouns = ["cat", "dog", "car", "hat"]
    with p.open("w") as f:
        for i in range(24):
            lab = LABELS[i % 3]
            text = f"The {nouns[i % 4]} is {lab}." + " It sat on the mat." * (i % 4)  # lengths vary: padding
            f.write(json.dumps({"id": f"ex{i:02d}", "text": text, "label": lab, "task": "classification",
                                "source": "toy", "split": ("train", "train", "val", "test")[i % 4],
                                "qa": [{"question": "What colour is it?", "answer": lab}]}) + "\n")
    return p


def _harvest(donor: Path, data: Path, out: Path) -> Store:
    harvest(HarvestConfig(donor=str(donor), data=str(data), out=str(out), layers=[1], shard_rows=8, chunk_rows=8,
                          batch_size=4, progress=False, device="cpu"))
    return Store(out)


def _run(store: Store, decoder: Path, out: Path) -> Path:
    return train(TrainConfig(stores=[str(store.path)], out=str(out), decoder=str(decoder), adapter="mlp",
                             adapter_options={"k": 2, "hidden": 16}, stage="2", steps=3, batch_size=4, eval_every=3,
                             val_items=4, device="cpu", progress=False))


def _unpadded_last(model, ids: list[int], path: str) -> torch.Tensor:
    """Block ``path``'s output at the last token of one text run alone (no padding anywhere)."""
    seen = {}

    def keep(_m, _i, out):
        seen.setdefault("h", out[0] if isinstance(out, tuple) else out)

    h = dict(block_modules(model))[path].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        h.remove()
    return seen["h"][0, -1].float()


@pytest.mark.parametrize("family", list(CAUSAL))
def test_family_harvest_train_explain(request, family, data, tmp_path):
    from uav_eval.verbalizer import explain
    from uav_eval.generate import generate

    folder = request.getfixturevalue(family)
    path, chat, per_block = CAUSAL[family]

    # harvest: the block is named by its module path, and a short text padded inside a batch of longer ones reads
    # what it reads alone
    store = _harvest(folder, data, tmp_path / "store")
    assert store.layers == [path] and store.meta["complete"] and store.verify() == []
    model, tok = load(resolve(str(folder)))
    lengths = store.group["examples/n_tokens"][:]
    short = int(lengths.argmin())
    assert lengths.max() > lengths[short] + 4  # it really was padded in its batch
    want = _unpadded_last(model, store.token_ids(short).tolist(), path)
    got = store.read_rows(path, [short])[0].float()
    tol = 2e-2 if store.meta["dtype"] == "bf16" else 2e-3
    torch.testing.assert_close(got, want.to(got.dtype).float(), rtol=tol, atol=tol * float(want.abs().max()))

    # train: LoRA sits on every Linear of the language blocks and nowhere else (no vision tower, no LM head)
    run = _run(store, folder, tmp_path / "run")
    rec = json.loads((run / "config.json").read_text())
    assert rec["status"] == "complete"
    n_blocks = len(block_modules(model))
    lora = load_file(str(run / "lora" / "adapter_model.safetensors"))
    wrapped = {k.split(".lora_")[0] for k in lora}
    assert len(wrapped) == n_blocks * per_block, sorted(wrapped)
    assert all(f"{path.rsplit('.', 1)[0]}." in k and "vision" not in k and "lm_head" not in k for k in wrapped)
    cfg = json.loads((run / "lora" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == block_linears(model)

    # the decoder's padding: a batch's summed answer loss is the sum of its items' losses alone (right padding)
    tr = Trainer(TrainConfig(stores=[str(store.path)], out=str(tmp_path / "probe"), decoder=str(folder),
                             adapter_options={"k": 2, "hidden": 16}, stage="2", device="cpu", progress=False))
    assert PromptTemplate(tr.tok).use_chat is chat
    from uav_train.stream import ItemStream

    items = next(ItemStream([store], "train", seed=0).batches(4))
    with torch.no_grad():
        total, n = tr.loss_terms(items, "qa")
        alone = [tr.loss_terms([it], "qa") for it in items]
    assert n == sum(m for _, m in alone)
    torch.testing.assert_close(total, sum(t for t, _ in alone), rtol=1e-4, atol=1e-4)

    # explain, and batched generation (left padding) answers as one prompt at a time does
    answers = explain(str(run), "The cat is red.", ["What colour is it?"], max_new_tokens=3, device="cpu",
                      donor=str(folder))
    assert [q for q, _ in answers] == ["What colour is it?"]
    lr = load_run(run)
    k = 2  # the mlp adapter's soft tokens (_run)
    prompts = [lr.template.prompt(q, k) for q in ("What colour is it?", "Which colour, in one word, is it?")]
    soft = torch.randn(2, k, model.get_input_embeddings().weight.shape[1]) * 0.1
    stop = lr.template.stop_ids()
    batched = generate(lr.model, lr.tok, prompts, soft, stop_ids=stop, max_new_tokens=4)
    one = [generate(lr.model, lr.tok, [p], soft[i:i + 1], stop_ids=stop, max_new_tokens=4)[0]
           for i, p in enumerate(prompts)]
    assert batched == one


def test_bert_encoder_donor_harvest_train_explain(tiny_bert_dir, tiny_llama_dir, data, tmp_path):
    """The encoder family is a donor only: its blocks (encoder.layer.N) feed a causal decoder's adapter."""
    from uav_eval.verbalizer import explain

    store = _harvest(tiny_bert_dir, data, tmp_path / "store")
    assert store.layers == ["encoder.layer.1"] and store.meta["donor_kind"] == "encoder"
    run = _run(store, tiny_llama_dir, tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["status"] == "complete"
    answers = explain(str(run), "The cat is red.", ["What colour is it?"], max_new_tokens=3, device="cpu",
                      donor=str(tiny_bert_dir))
    assert len(answers) == 1


def test_every_registry_family_has_a_tiny_model_here():
    """A family added to the registry without a tiny model in this file fails here, not on a GPU box."""
    tested = {"llama", "qwen3", "gemma3", "gemma3_text", "mistral", "bert"}
    from uav_cache.models import list_models

    assert {m.family for m in list_models()} <= tested
