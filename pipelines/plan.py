"""`uav plan`: what a harvest and a training will cost, from the models' configs alone, before anything loads.

Store bytes, donor and decoder memory per GPU for the chosen precision and sharding, and tokens to process. The
sizes come from the registry's ``[arch]`` tables (uav_cache/registry/*.toml, copied from each model's published
config.json) or a local folder's config.json; no weights, tokenizer or hub is touched. Every number is an estimate
whose assumptions are printed with it (:data:`ASSUMPTIONS`); `tests/test_plan.py` checks them against what the
CPU runs measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from uav_cache.arch import arch_of
from uav_cache.config import check_bound
from uav_cache.errors import UavError
from uav_cache.models import resolve
from uav_train.budget import frozen_bytes, lora_params, step_bytes, trainable_bytes

GIB = 2**30
CHARS_PER_TOKEN = 4.0  # English BPE: ~4 characters a token (SmolLM2 on the demo texts: 4.3; said in the output)
CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspaces and allocator slack per GPU
PROMPT_TOKENS = 40  # chat template + question + answer around the k soft tokens (the demo: 38 a item, measured)
ASSUMPTIONS = [
    f"text length: the data's characters ÷ {CHARS_PER_TOKEN:g} a token, capped at max_length (the store records the "
    "real count)",
    "store: 2 bytes a value (fp16/bf16), one vector per text, block and read-out; --positions all adds one per token",
    "harvest: the donor's weights in bf16 on a GPU (fp32 on a CPU), nothing above the deepest read block runs, no "
    "KV cache; --device-map divides the weights over the GPUs",
    "training: frozen decoder weights in the precision's dtype; adapter and LoRA in fp32 with fp32 gradients and "
    "AdamW's two moments (16 bytes a trainable parameter); every rank holds them whole",
    "fsdp: each rank holds 1/N of the blocks' weights plus two gathered blocks; embeddings, final norm and LM head "
    "stay whole",
    f"activations: 2 bytes × (10·d + 4·intermediate) a token a block kept for backward (×2 in fp32); an item is k soft "
    f"tokens + {PROMPT_TOKENS} tokens of template, question and answer; the LM head runs on answer tokens only",
    f"+ {CONTEXT_GIB:g} GiB a GPU for the CUDA context and allocator slack; CPU runs count the process's own memory",
]


@dataclass
class PlanInput:
    """What `uav plan` takes: the harvest's and the training's options (or a recipe's)."""

    donor: str = "smollm2-135m"
    decoder: str = "smollm2-135m"
    adapter: str = "mlp"
    adapter_options: dict = field(default_factory=dict)
    data: str = "demo"
    texts: int | None = None  # texts to harvest (default: counted from --data when it is local)
    chars_per_text: float | None = None  # (default: measured on --data when it is local)
    tokens_per_text: float | None = None  # (default: characters ÷ CHARS_PER_TOKEN, capped at max_length)
    layers: int = 1  # blocks harvested
    readouts: int = 2  # pooled read-outs stored a block (last, mean)
    positions: str = "last"
    max_length: int | None = None
    steps: int = 200
    stage1_steps: int = 0
    batch_size: int = 8
    max_answer_tokens: int | None = None
    precision: str = "auto"
    sharding: str = "ddp"
    nproc: int = 1  # training processes (GPUs)
    donor_gpus: int = 1  # GPUs a --device-map harvest spreads the donor over
    lora_r: int = 8
    no_lora: bool = False
    grad_checkpointing: bool = False
    device: str = "cuda"  # cuda: the plan for a GPU box; cpu: for this machine (fp32 by default)
    gpu_gib: float = 80.0  # one GPU's memory, for the fits / does not fit line

    def check(self) -> None:
        """Refuse a number that would divide by zero (``nproc`` 0) or plan nothing, naming its `uav plan` flag."""
        for name, low, strict in NUMBERS:
            if getattr(self, name) is not None:
                flag = f"--{name.replace('_', '-')}" if name in FLAGS else name
                fix = f"pass {flag} with a number {'>' if strict else '≥'} {low}"
                check_bound(flag, getattr(self, name), low, fix, strict)


# Every number a plan takes: (field, lowest value, strictly above it); None (not given) takes the default
NUMBERS = (("texts", 1, False), ("chars_per_text", 0, True), ("tokens_per_text", 0, True), ("layers", 1, False),
           ("readouts", 1, False), ("max_length", 1, False), ("steps", 0, False), ("stage1_steps", 0, False),
           ("batch_size", 1, False), ("max_answer_tokens", 1, False), ("nproc", 1, False), ("donor_gpus", 1, False),
           ("lora_r", 1, False), ("gpu_gib", 0, True))
# the fields `uav plan` takes as flags of the same name (pipelines/cli.py)
FLAGS = ("texts", "chars_per_text", "layers", "max_length", "steps", "batch_size", "max_answer_tokens", "nproc",
         "donor_gpus", "gpu_gib")


def _data_size(data: str, limit: int | None = None) -> tuple[int, float] | None:
    """(texts, mean characters) of local data (a recipe name, folder or JSONL): read, never a model."""
    from uav_cache.examples import load_examples

    try:
        ex = load_examples(data, limit=limit)
    except Exception:  # noqa: BLE001 - a hub dataset or a typo: the caller asks for --texts
        return None
    n = len(ex.examples)
    return n, sum(len(e.get("text", "")) for e in ex.examples) / max(n, 1)


def estimate(p: PlanInput) -> dict:
    """Every figure of the plan (bytes, tokens) and the inputs it used."""
    p.check()
    import torch

    from uav_cache.device import resolve_precision
    from uav_train.adapters import adapter_config, build_adapter

    donor_spec, dec_spec = resolve(p.donor), resolve(p.decoder)
    donor, dec = arch_of(donor_spec), arch_of(dec_spec)
    gpu = p.device != "cpu"
    # a GPU box: bf16 units assumed (auto → bf16); this machine's CPU: what a run here would compute in (bf16 only
    # where it has bf16 units: uav_cache.device.resolve_precision)
    precision = (("bf16" if p.precision == "auto" else p.precision) if gpu
                 else resolve_precision(p.precision, torch.device("cpu")))
    max_len = p.max_length or donor_spec.max_length
    known = p.texts and (p.chars_per_text or p.tokens_per_text)
    size = None if known else _data_size(p.data)
    if size is None and not known:
        raise UavError(f"--data {p.data!r} is not local data, so the number and length of texts are unknown here",
                       "pass --texts N and --chars-per-text C (or a local --data)")
    texts = p.texts or size[0]
    chars = p.chars_per_text or (size[1] if size else CHARS_PER_TOKEN * p.tokens_per_text)
    tok_per_text = p.tokens_per_text or min(max_len, max(1.0, chars / CHARS_PER_TOKEN))
    harvest_tokens = texts * tok_per_text

    # the store: pooled vectors (and every token with --positions all), token ids and the examples table
    value = 2
    pooled = texts * p.layers * p.readouts * donor.d_model * value
    all_tokens = harvest_tokens * p.layers * donor.d_model * value if p.positions == "all" else 0
    tables = harvest_tokens * 4 + texts * (chars + 300)  # int32 ids; the examples table as JSON (text + QA)
    store = pooled + all_tokens + tables

    # the donor: weights (divided over --device-map GPUs), one batch's activations up to the deepest block
    dbytes = 2 if gpu else 4
    donor_w = donor.params * dbytes / max(p.donor_gpus, 1)
    donor_act = 8 * max_len * (4 * donor.d_model + 2 * donor.intermediate) * dbytes  # batch 8, one block live
    donor_total = donor_w + donor_act + (CONTEXT_GIB * GIB if gpu else 0)

    # the decoder: frozen weights, trainables (adapter + LoRA) with grads and AdamW, one step's activations and logits
    # (uav_train.budget, the memory model the training checks itself against)
    frozen = frozen_bytes(dec, precision, p.nproc, fsdp=p.sharding == "fsdp" and p.nproc > 1)
    with torch.device("meta"):
        ad = build_adapter(adapter_config(p.adapter, **p.adapter_options), donor.d_model, p.layers, dec.d_model, 1.0)
    adapter_n = sum(x.numel() for x in ad.parameters() if x.requires_grad)
    k = ad.k
    lora_n = 0 if p.no_lora else lora_params(dec, p.lora_r)
    trainable = trainable_bytes(adapter_n + lora_n)
    seq = k + PROMPT_TOKENS + (p.max_answer_tokens or 0)
    per_rank_items = max(1, math.ceil(p.batch_size / p.nproc))
    step = step_bytes(dec, items=per_rank_items, seq=seq, answer_tokens=p.max_answer_tokens or 16, precision=precision,
                      grad_checkpointing=p.grad_checkpointing)
    acts, logits = step["activations"], step["logits"]
    dec_total = frozen + trainable + acts + logits + (CONTEXT_GIB * GIB if gpu else 0)

    train_tokens = (p.steps + p.stage1_steps) * p.batch_size * seq
    return {
        "input": p.__dict__, "precision": precision, "donor": donor.__dict__, "decoder": dec.__dict__,
        "texts": texts, "tokens_per_text": tok_per_text, "harvest_tokens": harvest_tokens, "store_bytes": store,
        "store_parts": {"pooled": pooled, "all_tokens": all_tokens, "tables": tables},
        "donor_bytes": donor_total, "donor_parts": {"weights": donor_w, "activations": donor_act},
        "decoder_bytes": dec_total,
        "decoder_parts": {"frozen_weights": frozen, "trainables_with_adam": trainable, "activations": acts,
                          "logits": logits},
        "adapter_params": adapter_n, "lora_params": lora_n, "k": k, "seq": seq, "train_tokens": train_tokens,
        "fits": {"donor": donor_total <= p.gpu_gib * GIB, "decoder": dec_total <= p.gpu_gib * GIB},
    }


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB" if x >= 0.1 * GIB else f"{x / 2**20:.0f} MiB"


def render(e: dict) -> str:
    p = e["input"]
    d, c = e["donor"], e["decoder"]
    where = "per GPU" if p["device"] != "cpu" else "in this process (CPU)"
    mode = (f"FSDP2 over {p['nproc']} GPUs" if p["sharding"] == "fsdp" and p["nproc"] > 1 else
            f"DDP over {p['nproc']} GPUs" if p["nproc"] > 1 else "one process")
    fit = lambda ok: "fits" if ok else "does NOT fit"  # noqa: E731
    room = p["gpu_gib"] * GIB - CONTEXT_GIB * GIB
    need_donor = math.ceil(e["donor_parts"]["weights"] * p["donor_gpus"] / max(room - e["donor_parts"]["activations"], 1))
    hint_donor = "" if e["fits"]["donor"] else f" (spread it: --device-map auto over ≥ {need_donor} GPUs)"
    hint_dec = "" if e["fits"]["decoder"] else " (try --sharding fsdp with more --nproc, or --grad-checkpointing)"
    lines = [
        f"uav plan: {d['name']} ({d['params'] / 1e9:.2f}B) → {c['name']} ({c['params'] / 1e9:.2f}B), adapter "
        f"{p['adapter']} (k {e['k']}), precision {e['precision']}, {mode}",
        "",
        f"harvest   {e['texts']} texts × ~{e['tokens_per_text']:.0f} tokens = {e['harvest_tokens'] / 1e6:.2f}M tokens "
        f"through {d['name']}",
        f"store     {_gib(e['store_bytes'])}  ({p['layers']} block(s) × {p['readouts']} read-outs × d {d['d_model']}"
        + (f"; every token: {_gib(e['store_parts']['all_tokens'])}" if p["positions"] == "all" else "") + ")",
        f"donor     {_gib(e['donor_bytes'])} {where}"
        + (f" (spread over {p['donor_gpus']} GPUs by --device-map)" if p["donor_gpus"] > 1 else "")
        + f": weights {_gib(e['donor_parts']['weights'])}, activations {_gib(e['donor_parts']['activations'])}"
        + (f" — {fit(e['fits']['donor'])} a {p['gpu_gib']:g} GiB GPU{hint_donor}" if p["device"] != "cpu" else ""),
        f"decoder   {_gib(e['decoder_bytes'])} {where}: frozen weights {_gib(e['decoder_parts']['frozen_weights'])}, "
        f"adapter {e['adapter_params'] / 1e6:.1f}M + LoRA {e['lora_params'] / 1e6:.1f}M params with AdamW "
        f"{_gib(e['decoder_parts']['trainables_with_adam'])}, activations {_gib(e['decoder_parts']['activations'])} "
        f"({max(1, math.ceil(p['batch_size'] / p['nproc']))} items × {e['seq']} tokens), LM-head logits "
        f"{_gib(e['decoder_parts']['logits'])}"
        + (f" — {fit(e['fits']['decoder'])} a {p['gpu_gib']:g} GiB GPU{hint_dec}" if p["device"] != "cpu" else ""),
        f"training  {p['steps'] + p['stage1_steps']} steps × {p['batch_size']} items × ~{e['seq']} tokens = "
        f"{e['train_tokens'] / 1e6:.2f}M tokens through {c['name']}",
        "",
        "sizes from: " + "; ".join(f"{a['name']}: {a['source']}" for a in (d, c)),
        "assumptions:",
        *[f"  - {a}" for a in ASSUMPTIONS],
    ]
    return "\n".join(lines)


def plan_from_recipe(path: Path, **over) -> PlanInput:
    """A recipe's first donor and first run ([train] defaults under it), then the CLI's overrides."""
    from pipelines.demo import run_config
    from uav_cache.config import read_recipe
    from uav_train.trainer import TrainConfig

    rec = read_recipe(path)
    if rec.get("runs"):
        t = run_config(rec, rec["runs"][0])
    else:
        t = TrainConfig.from_dict(rec.get("train", {}), where=f"recipe {path} [train]")
    donor = (rec.get("donors") or [{}])[0]
    pi = PlanInput(donor=donor.get("name", "smollm2-135m"), decoder=t.decoder, adapter=t.adapter,
                   adapter_options=dict(t.adapter_options), data=rec.get("data", {}).get("recipe", "demo"),
                   layers=len(donor.get("layers") or [1]), positions=donor.get("positions", "last"),
                   max_length=donor.get("max_length"), steps=t.steps if t.stage != "1" else 0,
                   stage1_steps=t.stage1_steps if t.stage != "2" else 0, batch_size=t.batch_size,
                   max_answer_tokens=t.max_answer_tokens, precision=t.precision, sharding=t.sharding,
                   lora_r=t.lora.r, no_lora=t.no_lora, grad_checkpointing=t.grad_checkpointing)
    for k, v in over.items():
        if v is not None:
            setattr(pi, k, v)
    return pi


__all__ = ["PlanInput", "estimate", "render", "plan_from_recipe", "ASSUMPTIONS"]
