"""A model's sizes from its config alone, before any weight loads: what a memory estimate needs (`uav plan`, and the
training's check before its first step). Read from a local folder's config.json, or from the registry entry's
``[arch]`` table (uav_cache/registry/*.toml, copied from each model's published config.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from uav_cache.errors import UavError
from uav_cache.models import ModelSpec

SIZES = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


@dataclass
class Arch:
    """The sizes an estimate needs, read from a registry [arch] table or a config.json."""

    name: str
    kind: str  # causal | encoder
    n_layers: int
    d_model: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    params: int  # every weight, vision tower included where the checkpoint has one
    extra_params: int = 0  # weights outside the language model (a vision tower): loaded, never run
    source: str = ""

    @property
    def block_params(self) -> int:
        d, hd = self.d_model, self.head_dim
        attn = d * self.heads * hd * 2 + d * self.kv_heads * hd * 2
        mlp = (2 if self.kind == "encoder" else 3) * d * self.intermediate
        return attn + mlp

    @property
    def other_params(self) -> int:
        """Weights outside the blocks: embeddings, LM head, final norm, a vision tower."""
        return max(self.params - self.n_layers * self.block_params, 0)

    def linears_per_block(self) -> list[tuple[int, int]]:
        """(in, out) of each Linear in a block, as LoRA wraps them."""
        d, hd = self.d_model, self.head_dim
        attn = [(d, self.heads * hd), (d, self.kv_heads * hd), (d, self.kv_heads * hd), (self.heads * hd, d)]
        mlp = [(d, self.intermediate)] * (1 if self.kind == "encoder" else 2) + [(self.intermediate, d)]
        return attn + mlp


def count_params(cfg: dict, kind: str) -> int:
    """Weights of a decoder-only (Llama, Qwen3, Gemma-3, Mistral) or BERT model from its config's sizes: attention,
    gated MLP, norms, embeddings (and an untied LM head). Exact for Llama-3.1-8B (8,030,261,248)."""
    d, ff, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    if kind == "encoder":  # BERT: biased Linears, LayerNorms, position and token-type embeddings, pooler
        block = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
        emb = (v + cfg.get("max_position_embeddings", 512) + cfg.get("type_vocab_size", 2)) * d + 2 * d
        return n * block + emb + d * d + d
    block = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * ff + 2 * d
    if cfg.get("model_type", "").startswith(("qwen3", "gemma3")):
        block += 2 * hd  # q and k norms
    if cfg.get("model_type", "").startswith("gemma3"):
        block += 2 * d  # Gemma's extra pre/post feed-forward norms
    return n * block + v * d * (1 if cfg.get("tie_word_embeddings", True) else 2) + d


def _meta_params(spec: ModelSpec) -> int:
    """A local folder's exact weight count: its config built on the meta device (no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(spec.path)
    with torch.device("meta"):
        model = (AutoModelForCausalLM if spec.kind == "causal" else AutoModel).from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def arch_of(spec: ModelSpec, *, exact: bool = True) -> Arch:
    """Sizes from a local folder's config.json, else from the registry entry's [arch] table. A folder's weights are
    counted exactly (its config built on the meta device) unless ``exact`` is off: then from its sizes, which is all a
    memory check needs."""
    extra = 0
    if spec.path:
        p = Path(spec.path) / "config.json"
        cfg = json.loads(p.read_text())
        tc = {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg
        tc.setdefault("model_type", cfg.get("model_type", ""))
        src = str(p)
    else:
        tc = dict(spec.extra.get("arch") or {})
        if not tc:
            raise UavError(f"model {spec.name!r} has no [arch] table in the registry, so its size is unknown here",
                           "add the published config.json's sizes as an [arch] table to its TOML (see qwen3-4b.toml), "
                           "or pass a local folder")
        tc.update(num_hidden_layers=spec.n_layers, hidden_size=spec.d_model, model_type=spec.family)
        src, extra = f"uav_cache/registry/{spec.name}.toml [arch]", int(tc.get("vision_params", 0))
    missing = [k for k in SIZES if k not in tc]
    if missing:
        raise UavError(f"{src} gives no {', '.join(missing)}, so the model's size is unknown here",
                       "add them (as the model's published config.json has them)")
    text = count_params(tc, spec.kind)
    if spec.path and exact:
        tc["params"] = _meta_params(spec)
        extra = tc["params"] - text
    heads = tc["num_attention_heads"]
    return Arch(name=spec.name, kind=spec.kind, n_layers=tc["num_hidden_layers"], d_model=tc["hidden_size"],
                intermediate=tc["intermediate_size"], heads=heads, kv_heads=tc.get("num_key_value_heads") or heads,
                head_dim=tc.get("head_dim") or tc["hidden_size"] // heads, vocab=tc["vocab_size"],
                tied=bool(tc.get("tie_word_embeddings", True)), params=int(tc.get("params") or text + extra),
                extra_params=extra, source=src)
