"""Training: stage 1 (alignment), stage 2 (QA tuning) and adapter-only transfer as settings of one loop.

Stage 1 trains the adapter alone against a frozen decoder to reproduce the donor's input text from the
soft tokens. Stage 2 warm-starts from that adapter and adds a peft LoRA on the decoder; the loss is on the
answer only. Adapter-only transfer (``frozen_decoder``) loads another run's LoRA frozen and trains a new
adapter for a new donor. The donor is never loaded here: everything comes from activation stores.

Data-parallel under torchrun (``torchrun --nproc-per-node N -m uav_train.trainer …``): each process takes its
slice of every global batch (``batch_size`` stays the global batch), DDP (gloo on CPU, nccl on GPU) averages the
gradients, and the loss is normalised by the global count of answer tokens, so N processes take the step one
process would. Only rank 0 writes: metrics, checkpoints, the best weights and the run record.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from uav_cache import distributed
from uav_cache.config import from_table, read_recipe, refuse_unknown
from uav_cache.errors import UavError
from uav_cache.files import share_mode, write_text_atomic
from uav_cache.device import cpu_threads, pick_device, resolve_precision
from uav_cache.models import block_linears, embedding_norm, hidden_size, load, resolve, weights_fingerprint
from uav_cache.store import READOUTS, Store, check_compatible
from uav_train import budget
from uav_train.adapters import (TOKEN_KINDS, AdapterInput, InputAdapter, MLPAdapter, PerVectorAdapter, adapter_config,
                                build_adapter)
from uav_train.distill import distill, teacher_pairs, teacher_stores
from uav_train.prompt import IGNORE, PromptTemplate, collate, splice
from uav_train.run import (CHECKPOINT, CONFIG, LORA, METRICS, RunInfo, RunRecord, StoreRecord, adapter_description,
                           check_out, load_adapter, load_checkpoint, plot_losses, read_json, replace_dir,
                           save_adapter, save_checkpoint, save_tensors, temp_dir_for)
from uav_train.stream import FORMS, InputSpec, Item, ItemStream, derangement, read_rows, stack_x


RECIPE_SECTIONS = ("data", "donors", "train", "runs", "eval", "seeds")  # a recipe's top-level keys (see demo.toml)
PRECISIONS = ("auto", "fp32", "bf16")
SHARDINGS = ("ddp", "fsdp")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainConfig:
    """One training run. Recipes (pipelines/recipes/*.toml) set these fields; the CLI overrides them."""

    stores: list[str] = field(default_factory=list)  # store paths or fsspec URLs (same donor and layers)
    out: str = "runs/self"  # run directory (resumes if it holds an unfinished run)
    decoder: str = "smollm2-135m"  # decoder LLM: registry name or local folder
    adapter: str = "mlp"  # the pooled read-out's adapter: mlp | qformer | affine | lowrank | none (no pooled input)
    adapter_options: dict = field(default_factory=dict)  # fields of that adapter's config (k, hidden, …)
    # stored layers whose token vectors feed the tokens adapter (a store harvested with --positions all or
    # window:W), module paths or block indices; none by default: the run reads the pooled read-out only
    token_layers: list[str | int] | None = None
    token_adapter: str = "pervector"  # the token vectors' adapter: pervector (m soft tokens per vector) | qformer
    token_adapter_options: dict = field(default_factory=dict)  # fields of that adapter's config (m, hidden, …)
    # what each QA item shows the adapter (stream.FORMS: pooled, tokens, full, window, token) with weights; default:
    # full (read-out and every stored token) when the run reads both, else the one it reads; evaluation shows full
    forms: dict[str, float] = field(default_factory=dict)
    window: list[int] = field(default_factory=lambda: [1, 32])  # (min, max) tokens of window and self-supervised items
    # self-supervised items per text and epoch in stage 2 (a window of token vectors → its own text, or the words
    # before or after it); they need token_layers and no labels
    context: float = 0.0
    # times each yes/no question is seen per epoch, on top of its source's weight (0: none, e.g. the labels-first run
    # of a curriculum whose next run, init_from it, adds them)
    yesno: float = 1.0
    stage1_task: str = "text"  # stage 1's objective: text (the whole text from the run's input) or context (windows)
    stage: str = "both"  # "1" alignment only, "2" QA only (fresh adapter), "both" = 1 then 2
    stage1_steps: int = 100  # stage-1 steps
    steps: int = 200  # stage-2 steps
    batch_size: int = 8  # items per step
    # batches per length-sorted pool: that many batches' items are drawn, sorted by sequence length and cut into
    # batches, so a batch pads less (the same items, in another order; 1: off)
    length_groups: int = 1
    lr_stage1: float = 1e-3  # adapter, stage 1
    lr_adapter: float = 5e-4  # adapter, stage 2
    lr_lora: float = 2e-4  # LoRA, stage 2
    # the tokens adapter in stage 2 (default: lr_adapter); its warm-started skip path maps every token, so a step that
    # suits a pooled adapter undoes its closed-form fit (research log, run 1)
    lr_tokens: float | None = None
    warmup: int = 10  # linear warm-up steps, then cosine to 10%
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    no_lora: bool = False  # frozen decoder: only the adapter trains, in both stages
    frozen_decoder: str | None = None  # RUN_A: reuse its LoRA frozen, train only a new adapter (transfer)
    # RUN_A: start from its adapter and LoRA, both training (a curriculum: a run that names labels, then yes/no
    # questions about them; research log, run 24); the same decoder, donor, inputs and adapter as RUN_A, no warm start
    init_from: str | None = None
    # with frozen_decoder: this many decoder-free steps first fit the new adapter to the soft tokens RUN_A's adapter
    # emits for the same texts (uav_train.distill; both stores must hold the same dataset), then stage 2 as usual
    distill: int = 0
    # fold a LoRA that no longer trains into the decoder's weights (peft's merge_and_unload): the frozen one of a
    # transfer run, and any run's at evaluation and in `uav explain`. 0.75× the frozen step time and 0.82× the
    # generation time in bf16, 0.92× and 0.80× in fp32 (`make bench`); in a bf16 run, at the price of W + BA rounded
    # once to bf16. False keeps peft's layers, whose LoRA path runs in fp32 beside the bf16 weights
    merge_lora: bool = True
    # stored layers to read, module paths or block indices (default: every stored layer); see `uav store info`
    layers: list[str | int] | None = None
    # stored read-out that feeds the adapter (store.READOUTS): last (last token) or mean (mean over the tokens after
    # the sink); `uav store probe` shows which carries more
    readout: str = "last"
    sources: list[str] | None = None  # train (and validate) on these sources only (default: all)
    source_weights: dict[str, float] = field(default_factory=dict)  # source → times each of its items is seen per epoch
    max_answer_tokens: int | None = None  # stage-2 targets cut to N tokens (long gist answers cost the most per step)
    # before the first stage, fit the skip paths in closed form: the pooled mlp's to the mean embedding of each
    # answer, the pervector adapter's to the decoder's embedding of each token's own text (skip = true in both)
    warm_start: bool = False
    max_target_tokens: int = 48  # stage-1 targets: the first N tokens of the donor's text
    eval_every: int = 25
    val_items: int = 64
    patience: int = 4  # early stopping: validations without improvement
    checkpoint_every: int = 25
    shuffle_buffer: int = 512
    max_bad_fraction: float = 0.01  # items with NaN/inf activations are skipped up to this fraction
    skip_corrupt: bool = False  # unreadable store chunks: skip them (counted, warned) instead of refusing
    allow_incomplete: bool = False  # train on a store whose harvest has not finished (its committed shards only)
    seed: int = 0  # random seed
    device: str = "auto"  # auto, cpu, cuda …
    grad_checkpointing: bool = False  # trade compute for memory
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16: bf16 autocast with the frozen decoder weights in bf16; the
    # adapter and LoRA weights (what the optimizer updates) stay fp32
    precision: str = "auto"
    # under torchrun: ddp (every rank holds the whole decoder) | fsdp (FSDP2: each decoder block's frozen weights
    # sharded over the ranks, for decoders that do not fit one GPU); the step is the same either way
    sharding: str = "ddp"
    threads: int | None = None  # intra-op CPU threads (default: torch's); a resume is bit-identical with the same count
    progress: bool = True

    @classmethod
    def from_recipe(cls, path: str | Path, section: str = "train", **overrides) -> "TrainConfig":
        """Fields from a TOML recipe's ``[train]`` table (and ``[train.lora]``), then ``overrides``."""
        rec = read_recipe(path)
        refuse_unknown(rec, RECIPE_SECTIONS, "section", f"recipe {path}")  # a misspelt [trian] would train the defaults
        data = rec.get(section, {})
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}},
                             where=f"recipe {path} [{section}]")

    @classmethod
    def from_dict(cls, d: dict, where: str = "training settings") -> "TrainConfig":
        """Build and check a config (uav_cache.config.from_table): unknown keys, values of the wrong type and
        settings that would train nothing are refused with one line naming them."""
        d = dict(d)
        if isinstance(d.get("stores"), str):
            d["stores"] = [s for s in d["stores"].split(",") if s]
        if isinstance(d.get("lora"), dict):
            d["lora"] = from_table(LoraSettings, d["lora"], f"{where} lora", noun="LoRA setting")
        cfg = from_table(cls, d, where, noun="training setting")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse settings that would crash mid-run or finish having trained nothing, before anything is written."""
        stages = {"1": ("stage1_steps",), "2": ("steps",), "both": ("stage1_steps", "steps")}
        if self.stage not in stages:
            raise UavError(f"stage must be \"1\", \"2\" or \"both\", got {self.stage!r}",
                           'e.g. --stage both (in a recipe, a string: stage = "2")')

        def at_least(name: str, value, low, strict: bool = False) -> None:
            if not (value > low if strict else value >= low):  # (NaN fails both)
                from uav_train.cli import how_to_set

                raise UavError(f"{name} must be {'>' if strict else '≥'} {low}, got {value}", f"set {how_to_set(name)}")

        for name in stages[self.stage]:
            at_least(name, getattr(self, name), 1)
        for name in ("batch_size", "length_groups", "eval_every", "val_items", "checkpoint_every", "patience",
                     "max_target_tokens"):
            at_least(name, getattr(self, name), 1)
        for name in ("warmup", "shuffle_buffer", "seed", "weight_decay", "max_bad_fraction"):
            at_least(name, getattr(self, name), 0)
        for name in ("lr_stage1", "lr_adapter", "lr_lora", "grad_clip"):
            at_least(name, getattr(self, name), 0, strict=True)
        if self.lr_tokens is not None:
            at_least("lr_tokens", self.lr_tokens, 0, strict=True)
        if self.max_bad_fraction > 1 or not 0 <= self.lora.dropout < 1:
            raise UavError("max_bad_fraction and lora.dropout are fractions", "give values in [0, 1)")
        at_least("lora.r", self.lora.r, 1)
        at_least("lora.alpha", self.lora.alpha, 0, strict=True)
        if self.readout not in READOUTS:
            raise UavError(f"unknown read-out {self.readout!r}", f"use one of {', '.join(READOUTS)}")
        if self.max_answer_tokens is not None:
            at_least("max_answer_tokens", self.max_answer_tokens, 1)
        for src, w in self.source_weights.items():
            at_least(f"source_weights.{src}", w, 0, strict=True)
        ac = adapter_config(self.adapter, **self.adapter_options) if self.adapter != "none" else None
        tc = adapter_config(self.token_adapter, **self.token_adapter_options) if self.token_layers else None
        if ac is None and tc is None:
            raise UavError('adapter = "none" reads no pooled read-out, and no token_layers are set: nothing to read',
                           "set token_layers (with a --positions all/window store) or a pooled adapter")
        if tc is not None and self.token_adapter not in TOKEN_KINDS:
            raise UavError(f"token_adapter {self.token_adapter!r} cannot read a variable number of token vectors",
                           f"use one of {', '.join(TOKEN_KINDS)}")
        forms = self.forms or {"full" if ac and tc else ("tokens" if tc else "pooled"): 1.0}
        bad = [f for f in forms if f not in FORMS or (f != "pooled" and tc is None) or (f in ("pooled", "full") and ac is None)]
        if bad or any(not isinstance(v, (int, float)) or v <= 0 for v in forms.values()):
            raise UavError(f"forms {forms} include {bad or 'weights ≤ 0'}: a form needs the branch it shows (pooled: "
                           "a pooled adapter; tokens, window, token: token_layers; full: both)",
                           f"use forms of {', '.join(FORMS)} with weights > 0 that this run's adapters read")
        if len(self.window) != 2 or not 1 <= self.window[0] <= self.window[1]:
            raise UavError(f"window must be [min, max] tokens with 1 ≤ min ≤ max, got {self.window}", "e.g. window = [1, 32]")
        at_least("context", self.context, 0)
        at_least("yesno", self.yesno, 0)
        at_least("distill", self.distill, 0)
        if self.distill and (not self.frozen_decoder or self.stage != "2"):
            raise UavError("distill fits a fresh stage-2 adapter to a frozen run's soft tokens, and "
                           + ("no frozen_decoder is set" if not self.frozen_decoder else f"this run has stage {self.stage}"),
                           'set frozen_decoder = RUN_A with stage = "2" (adapter-only transfer), or distill = 0')
        if self.stage1_task not in ("text", "context"):
            raise UavError(f"stage1_task must be text or context, got {self.stage1_task!r}", 'e.g. stage1_task = "context"')
        if (self.context or self.stage1_task == "context") and tc is None:
            raise UavError("self-supervised (context) items are windows of token vectors, and this run reads none",
                           "set token_layers (a store harvested with --positions all or window:W), or context = 0")
        skips = [c for c in (ac, tc) if c is not None and getattr(c, "skip", False) and c.kind in ("mlp", "pervector")]
        if self.warm_start and not skips:
            raise UavError("warm_start fits the skip path of a fresh mlp (pooled) or pervector (tokens) adapter",
                           "use adapter mlp or token_adapter pervector with skip = true, or drop warm_start")
        if self.precision not in PRECISIONS:
            raise UavError(f"unknown precision {self.precision!r}", f"use one of: {', '.join(PRECISIONS)}")
        if self.sharding not in SHARDINGS:
            raise UavError(f"unknown sharding {self.sharding!r}", f"use one of: {', '.join(SHARDINGS)}")
        if self.init_from and (self.stage != "2" or self.frozen_decoder):
            raise UavError("init_from continues another run's adapter and LoRA in stage 2; it cannot "
                           + ("run stage 1" if self.stage != "2" else "also load a frozen_decoder"),
                           'use stage = "2" without frozen_decoder (or drop init_from)')
        pick_device(self.device)  # unknown or absent device

    def identity(self) -> dict:
        """Settings that change the weights: a resume must match these exactly."""
        d = asdict(self)
        # skip_corrupt is not identity: the stream is the same up to the first unreadable chunk, so a run that
        # stopped there resumes with --skip-corrupt exactly as a fresh --skip-corrupt run would go
        for k in ("out", "progress", "device", "checkpoint_every", "skip_corrupt", "allow_incomplete", "threads",
                  "sharding"):
            d.pop(k)
        # what every run did before the setting existed: their resumes (and a demo's finished runs) still match
        for k, before in (("precision", "auto"), ("length_groups", 1), ("init_from", None), ("yesno", 1.0),
                          ("distill", 0), ("merge_lora", True)):
            if d[k] == before:
                d.pop(k)
        return d


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def answer_loss(model, embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy on the labelled (answer) positions only, the same value as HF's
    ``labels=`` loss, but the LM head runs only where there is a label: the head is ~20% of SmolLM2's
    forward and more than the whole body for Gemma-3-270M's 262k vocabulary. ``reduction="sum"`` gives the
    sum over answer tokens (data-parallel steps divide by the global count); ``"item"`` gives (per-row sum, per-row
    count of answer tokens)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if reduction != "item":
        return torch.nn.functional.cross_entropy(logits, target[keep], reduction=reduction)
    tok = torch.nn.functional.cross_entropy(logits, target[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    n = labels.shape[0]
    return (torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok),
            torch.bincount(rows, minlength=n))


def answer_losses(model, template: PromptTemplate, adapter: InputAdapter, x: AdapterInput, questions: list[str],
                  answers: list[str] | list[list[int]], *, max_answer_tokens: int | None = None,
                  device: torch.device | str = "cpu", precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The one forward of a verbalizer on (activation, question) → answer, teacher-forced: the adapter's soft tokens
    go where each item's prompt puts them (as many as the item has), and the loss is read on the answer tokens only
    (answers as text, or as token ids: PromptTemplate.encode). Returns per item (summed cross-entropy of its answer
    tokens, their count). Training, validation and the Verbalizer's scores (log-probability of an answer) all call this. ``precision`` as TrainConfig's: bf16 runs under
    autocast (auto: on CUDA)."""
    device = torch.device(device)
    bf16 = resolve_precision(precision, device) == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        soft, soft_mask = adapter(x.to(device))
    encs = [template.encode(q, a, int(n), max_answer_tokens=max_answer_tokens)
            for q, a, n in zip(questions, answers, soft_mask.sum(1).tolist())]
    batch = {n: t.to(device) for n, t in collate(encs, template.tok.pad_token_id).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        emb = model.get_input_embeddings()(batch["input_ids"])
        emb = splice(emb, soft, batch["soft_positions"], soft_mask, batch["soft_mask"])
        return answer_loss(model, emb, batch["attention_mask"], batch["labels"], reduction="item")


def open_stores(paths: list[str], layers: list[str] | None = None, readout: str = "last",
                token_layers: list[str] | None = None) -> list[Store]:
    """Open the stores and refuse a mix of donors/layers/widths: they must describe the same space."""
    if not paths:
        raise UavError("no --store given", "pass --store PATH (a `uav harvest` output)")
    stores = []
    for p in paths:
        if "://" not in p and not Path(p).exists():
            raise UavError(f"store {p} not found", "run `make harvest` (or `uav harvest`) first, or fix --store")
        stores.append(Store(p))
    first = stores[0].meta
    for st in stores[1:]:
        check_compatible(st, donor=first["donor"], weights_fingerprint=first["weights_fingerprint"],
                         d_model=first["d_model"], dtype=first["dtype"])
    for layer in list(layers or stores[0].layers) + list(token_layers or []):  # every store holds what the run reads
        for st in stores:
            st.resolve_layer(layer)
    if token_layers:
        for st in stores:
            if st.token_width == 0:
                raise UavError(f"token_layers need token vectors, and store {st.path} holds pooled read-outs only "
                               f"(positions={st.meta['positions']})",
                               "re-harvest with --positions all or --positions window:W, or drop token_layers")
            for layer in token_layers:
                st.check_token_layer(st.resolve_layer(layer))
    for st in stores:
        st.check_readout(readout)
    return stores


def with_layer_paths(cfg: TrainConfig, store: Store) -> TrainConfig:
    """``cfg`` with block indices ("23") replaced by the store's module paths ("model.layers.23")."""
    paths = lambda xs: [store.resolve_layer(x) for x in xs] if xs else xs  # noqa: E731
    return replace(cfg, layers=paths(cfg.layers), token_layers=paths(cfg.token_layers))


def finished_run(path: str, flag: str, lora: bool) -> RunRecord:
    """The finished run another run builds on (``flag``: --frozen-decoder, init_from), refused before anything is
    written when it is not a run, has not finished (or lacks the LoRA it must bring), or its files are damaged."""
    p, fix = Path(path), "point it at a completed stage-2 run" + (" trained with LoRA" if lora else "")
    if not (p / CONFIG).exists():
        raise UavError(f"{flag} {path} is not a uav run directory", fix)
    rec = RunRecord.load(p / CONFIG)
    if rec.status != "complete" or (lora and not (p / LORA).exists()):
        raise UavError(f"{flag} {path} is not a finished run" + (" with a LoRA" if lora else ""), fix)
    RunInfo(p, rec).check_files()  # a damaged adapter or LoRA
    return rec


def input_spec(cfg: TrainConfig, store: Store) -> InputSpec:
    """What the run feeds its adapter (cfg's layers already module paths): the stream, warm start and record use it."""
    pooled = cfg.adapter != "none"
    tokens = tuple(cfg.token_layers or ())
    forms = cfg.forms or {"full" if pooled and tokens else ("tokens" if tokens else "pooled"): 1.0}
    return InputSpec(layers=tuple(cfg.layers or store.layers) if pooled else (), readout=cfg.readout if pooled else None,
                     token_layers=tokens, forms=tuple(sorted(forms.items())), window=tuple(cfg.window))


class Trainer:
    """Holds the decoder, the adapter and the stores for one run; :meth:`fit` runs the configured stages."""

    def __init__(self, cfg: TrainConfig, on_step: Callable[[int, int, float], None] | None = None):
        self.cfg, self.on_step = cfg, on_step
        self.run = Path(cfg.out)
        self.ranks = distributed.Ranks.from_env()
        if cfg.batch_size % self.ranks.world:
            raise UavError(f"batch_size {cfg.batch_size} (the global batch) does not split over {self.ranks.world} "
                           "processes", f"use a multiple of {self.ranks.world}, or another --nproc-per-node")
        self.device = pick_device(cfg.device, self.ranks.device_rank)
        self.stores = open_stores(cfg.stores, cfg.layers, cfg.readout, cfg.token_layers)
        cfg = self.cfg = with_layer_paths(cfg, self.stores[0])
        self.layers = cfg.layers or self.stores[0].layers
        self.spec = input_spec(cfg, self.stores[0])
        self.frozen_run = (finished_run(cfg.frozen_decoder, "--frozen-decoder", lora=True) if cfg.frozen_decoder
                           else None)
        spec = resolve(cfg.decoder, "--decoder")
        self.decoder_fingerprint = weights_fingerprint(spec)
        if self.frozen_run is not None:
            if self.frozen_run.decoder_weights() != self.decoder_fingerprint:
                raise UavError(f"--frozen-decoder run used decoder {self.frozen_run.train['decoder']} "
                               f"(other weights than {cfg.decoder})", "use the same --decoder as that run")
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.precision == "bf16" and self.precision == "fp32" and self.ranks.main:
            print(f"note: precision bf16 asked, and {self.device} has no bf16 matrix units (a bf16 step would run ~100× "
                  "slower than fp32): training in fp32", file=sys.stderr)
        self.fsdp = cfg.sharding == "fsdp" and self.ranks.world > 1
        # FSDP2 moves each block to this rank's GPU as it shards it, so the whole decoder never lands on one GPU
        self.model, self.tok = load(spec, device="cpu" if self.fsdp else str(self.device),
                                    dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32)
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.fsdp:
            from uav_train.sharding import shard_decoder, sharded_bytes
            whole = sharded_bytes(self.model)
            shard_decoder(self.model, self.device)
            if self.ranks.main:
                held = sharded_bytes(self.model)
                tqdm.write(f"FSDP2: rank 0 holds {held / whole:.2f} of the decoder's weights ({held / 2**20:.1f} of "
                           f"{whole / 2**20:.1f} MiB; blocks sharded over {self.ranks.world} ranks)", file=sys.stderr)
        if cfg.grad_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.template = PromptTemplate(self.tok)
        self.out_norm = embedding_norm(self.model)
        self.meta = self.stores[0].meta
        torch.manual_seed(cfg.seed)
        self.init_run = self._check_init_from() if cfg.init_from else None
        self.adapter = self._new_adapter() if self.init_run is None else self._init_adapter()
        self.peft = False

    def _check_init_from(self) -> RunRecord:
        """The finished run ``init_from`` names, refused unless this run could have trained it: the same decoder,
        donor (weights), inputs and LoRA settings. Checked before anything is written."""
        cfg, path = self.cfg, Path(self.cfg.init_from)
        rec = finished_run(cfg.init_from, "init_from", lora=False)
        first, meta, spec, theirs = rec.stores[0], self.meta, self.spec, rec.input_spec()
        bad = [f"{what}: {path.name} has {a}, this run {b}" for what, a, b in (
            ("decoder", rec.decoder_weights()[:12], self.decoder_fingerprint[:12]),
            ("donor", f"{first.donor} {(first.weights_fingerprint or '')[:12]}",
             f"{meta['donor']} {meta['weights_fingerprint'][:12]}"),
            ("layers", list(theirs.layers), list(spec.layers)), ("readout", theirs.readout, spec.readout),
            ("token_layers", list(theirs.token_layers), list(spec.token_layers))) if a != b]
        if rec.lora == "trained" and not cfg.no_lora and rec.train.get("lora") != asdict(cfg.lora):
            bad.append(f"lora: {path.name} has {rec.train.get('lora')}, this run {asdict(cfg.lora)}")
        if bad:
            raise UavError(f"init_from {path} does not fit this run ({'; '.join(bad)})",
                           "point init_from at a finished run of the same decoder, donor and inputs, or drop it")
        return rec

    def _init_adapter(self) -> InputAdapter:
        """``init_from``'s adapter, refused if this run's settings would build another one."""
        adapter, _ = load_adapter(Path(self.cfg.init_from))
        fresh = self._new_adapter(centre=False)  # only its description is compared: no pass over the store
        if adapter.describe() != fresh.describe():
            raise UavError(f"init_from {self.cfg.init_from}'s adapter is not the one this run's settings build "
                           f"({adapter.describe()} vs {fresh.describe()})",
                           "use that run's adapter, adapter_options, token_adapter and token_adapter_options")
        return adapter.to(self.device)

    def _new_adapter(self, centre: bool = True) -> InputAdapter:
        cfg, d_in, d_out, spec = self.cfg, self.meta["d_model"], hidden_size(self.model), self.spec
        pooled = tokens = None
        if spec.pooled:
            pooled = build_adapter(adapter_config(cfg.adapter, **cfg.adapter_options), d_in, len(spec.layers), d_out,
                                   self.out_norm)
        if spec.tokens:
            tokens = build_adapter(adapter_config(cfg.token_adapter, **cfg.token_adapter_options), d_in,
                                   len(spec.token_layers), d_out, self.out_norm)
        for branch, which in ((pooled, "pooled"), (tokens, "tokens")):
            if centre and branch is not None and hasattr(branch, "shift"):
                branch.shift.copy_(self.train_mean(which))
        return InputAdapter(pooled, tokens).to(self.device)

    def train_mean(self, which: str = "pooled", max_rows: int = 8192, max_tokens: int = 65536) -> torch.Tensor:
        """(layers, d) mean over the train split of the run's read-out (``pooled``: at most ``max_rows`` rows) or of
        its stored token vectors (``tokens``: at most ``max_tokens`` of them), in row order: the centre a centring
        adapter subtracts. Train rows only, so nothing of val/test leaks into the weights."""
        spec = self.spec
        n_layers = len(spec.layers if which == "pooled" else spec.token_layers)
        only = replace(spec, token_layers=()) if which == "pooled" else replace(spec, readout=None)
        total, n = torch.zeros(n_layers, self.meta["d_model"], dtype=torch.float64), 0
        cap = max_rows if which == "pooled" else max_tokens
        for st in self.stores:
            rows = st.split_rows("train")
            for a in range(0, len(rows), 512):
                if n >= cap:
                    break
                for ra in read_rows(st, rows[a:a + 512], only):
                    x = ra.pooled.unsqueeze(0) if which == "pooled" else ra.tokens
                    total += x.double().sum(0)
                    n += len(x)
        return (total / max(n, 1)).float()

    # ---- the one loss
    def length(self, item: Item) -> int:
        """About how many positions ``item`` takes in a batch (for length-grouped batches): its token vectors, its
        question and its answer as cut for training (soft tokens per vector and the template's fixed part aside)."""
        n = 0 if item.x.tokens is None else len(item.x.tokens)
        tok = self.template.tok
        return n + len(tok(item.question, add_special_tokens=False)["input_ids"]) + \
            len(tok(item.answer, add_special_tokens=False)["input_ids"][:self.cfg.max_answer_tokens])

    def loss(self, items: list[Item], mode: str) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of ``items``."""
        total, n = self.loss_terms(items, mode)
        return total / n

    def loss_terms(self, items: list[Item], mode: str) -> tuple[torch.Tensor, int]:
        """(sum of the answer tokens' cross-entropy, their count): the parts a data-parallel step adds up."""
        total, counts = self._answer_losses(items, mode)
        return total.sum(), int(counts.sum())

    def _answer_losses(self, items: list[Item], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per item: the summed cross-entropy of its answer tokens, and their count."""
        max_ans = self.cfg.max_target_tokens if mode != "qa" else self.cfg.max_answer_tokens
        return answer_losses(self.model, self.template, self.adapter, stack_x(items), [it.question for it in items],
                             [it.answer for it in items], max_answer_tokens=max_ans, device=self.device,
                             precision=self.precision)

    @torch.no_grad()
    def val_losses(self, items: list[Item], shuffled: list[Item] | None, mode: str) -> dict:
        """Validation loss, and (stage 2) the same items with another item's activation: the reading gap.
        A run whose gap stays at 0 answers from the question alone, whatever its loss does."""
        own = self.val_loss(items, mode)
        row = {"val_loss": own.pop("all")}
        if shuffled is not None:
            other = self.val_loss(shuffled, mode)
            row["val_loss_shuffled"] = other.pop("all")
            row["reading_gap"] = row["val_loss_shuffled"] - row["val_loss"]
            # per task group (classification, fact, gist, context …): which kinds of question it reads, early
            row.update({f"gap_{g}": other[g] - own[g] for g in sorted(own)})
        return row

    @torch.no_grad()
    def val_loss(self, items: list[Item], mode: str) -> dict[str, float]:
        """Mean answer-token cross-entropy over ``items`` ("all") and per task group."""
        self.model.eval(), self.adapter.eval()
        sums, counts = torch.zeros(len(items), dtype=torch.float64), torch.zeros(len(items), dtype=torch.float64)
        for i in range(0, len(items), self.cfg.batch_size):
            s, c = self._answer_losses(items[i:i + self.cfg.batch_size], mode)
            sums[i:i + len(s)], counts[i:i + len(c)] = s.double().cpu(), c.double().cpu()
        self.model.train(), self.adapter.train()
        out = {"all": float(sums.sum() / counts.sum().clamp_min(1))}
        for g in sorted({it.task for it in items}):
            idx = [j for j, it in enumerate(items) if it.task == g]
            out[g or "?"] = float(sums[idx].sum() / counts[idx].sum().clamp_min(1))
        return out

    @torch.no_grad()
    @torch.no_grad()
    def warm_start(self, max_items: int = 4096, max_tokens: int = 20000) -> dict:
        """Closed-form warm start of a fresh adapter's skip paths (ridge regressions; train split only).

        Pooled branch (mlp): from its input features to the mean input embedding of each training answer but yes/no
        ones (its first ``max_answer_tokens`` tokens): for a label the target *is* the label word's embedding, so the
        first soft tokens already say "sport" in the decoder's own vocabulary. Tokens branch (pervector): from each
        token's vectors to the decoder's embedding of that token's own text (self-supervised: no labels), so a window
        of soft tokens starts out as the decoder's own reading of those words, whatever the donor's tokenizer."""
        out = {}
        if isinstance(self.adapter.pooled, MLPAdapter) and self.adapter.pooled.skip is not None:
            out.update(self._warm_start_pooled(max_items))
        if isinstance(self.adapter.tokens, PerVectorAdapter) and self.adapter.tokens.skip is not None:
            out.update(self._warm_start_tokens(max_tokens))
        # say how well each fit explains its target: a low R² is the first sign a layer or donor will be hard to read
        parts = ([f"read-out → answer embeddings R² {out['warm_start_r2']:.2f} ({out['warm_start_items']:,} answers)"]
                 if "warm_start_r2" in out else [])
        if "warm_start_tokens_r2" in out:
            parts.append(f"token vectors → token embeddings R² {out['warm_start_tokens_r2']:.2f} "
                         f"({out['warm_start_tokens']:,} tokens)")
        if parts and self.cfg.progress and self.ranks.main:
            tqdm.write("warm start (train split): " + "; ".join(parts))
        return out

    def _warm_start_pooled(self, max_items: int) -> dict:
        cfg, branch = self.cfg, self.adapter.pooled
        only = replace(self.spec, token_layers=(), forms=(("pooled", 1.0),))
        # no yes/no answers: "yes" follows from the question and the activation together, not from the activation
        stream = ItemStream(self.stores, "train", mode="qa", seed=cfg.seed, epochs=1, shuffle_buffer=cfg.shuffle_buffer,
                            sources=cfg.sources, spec=only, yesno=0.0)
        emb = self.model.get_input_embeddings()
        vs, ts = [], []
        for batch in stream.batches(256):
            x = stack_x(batch).to(self.device)
            vs.append(branch.features(x.pooled.unsqueeze(1), torch.ones(len(batch), 1, dtype=torch.bool, device=self.device)))
            for it in batch:
                ids = self.template.answer_tokens(it.answer, cfg.max_answer_tokens) or [self.template.placeholder_id]
                ts.append(emb(torch.tensor(ids, device=self.device)).float().mean(0))
            if sum(len(v) for v in vs) >= max_items:
                break
        r2 = branch.warm_start(torch.cat(vs), torch.stack(ts))
        return {"warm_start_items": len(ts), "warm_start_r2": r2}

    def _warm_start_tokens(self, max_tokens: int) -> dict:
        """Targets come from the store's character spans: the token's text (with the space before it, as the decoder
        would write it mid-sentence) tokenized by the decoder; the mean of those pieces' input embeddings."""
        branch, emb = self.adapter.tokens, self.model.get_input_embeddings()
        only = replace(self.spec, readout=None, layers=())
        cache: dict[str, torch.Tensor] = {}
        vs, ts = [], []
        n = 0
        for st in self.stores:
            if not st.has_spans():
                raise UavError(f"the tokens warm start needs each token's text, and store {st.path} does not record it",
                               "re-harvest the store with this uav, or drop warm_start")
            rows = st.split_rows("train")
            for a in range(0, len(rows), 256):
                if n >= max_tokens:
                    break
                chunk = rows[a:a + 256]
                recs = st.records(int(chunk.min()), int(chunk.max()) + 1)
                for r, ra in zip(chunk, read_rows(st, chunk, only, spans=True)):
                    text = recs[int(r) - int(chunk.min())]["text"]
                    keep, targets = [], []
                    for j, p in enumerate(ra.positions):
                        x0, x1 = (int(v) for v in ra.spans[p])
                        if x0 < 0:
                            continue
                        piece = (" " if x0 > 0 and text[x0 - 1] == " " else "") + text[x0:x1]
                        if piece not in cache:
                            ids = self.tok(piece, add_special_tokens=False)["input_ids"] or [self.template.placeholder_id]
                            cache[piece] = emb(torch.tensor(ids, device=self.device)).float().mean(0)
                        keep.append(j)
                        targets.append(cache[piece])
                    if keep:
                        vs.append(branch.features(ra.tokens[keep].float().unsqueeze(0).to(self.device))[0])
                        ts.append(torch.stack(targets))
                        n += len(keep)
        if not vs:
            raise UavError("the train split has no token that is part of its text", "check the store's texts")
        r2 = branch.warm_start(torch.cat(vs), torch.cat(ts))
        return {"warm_start_tokens": n, "warm_start_tokens_r2": r2}

    def distill_from_frozen(self) -> dict:
        """Fit the fresh adapter to the frozen run's soft tokens for the same texts (uav_train.distill): the best
        step by val cosine is kept. Deterministic, so a resume redoes it before its checkpoint's weights win."""
        rec, cfg = self.frozen_run, self.cfg
        teacher, _ = load_adapter(Path(cfg.frozen_decoder))
        theirs = teacher_stores(rec.stores)
        train, val = (teacher_pairs(self.stores, self.spec, teacher, theirs, rec.input_spec(), split, device=self.device)
                      for split in ("train", "val"))
        out = distill(self.adapter, teacher.to(self.device), train, val, cfg.distill, seed=cfg.seed)
        if cfg.progress and self.ranks.main:
            cos = ", ".join(f"{k} {out[f'distill_val_cos_{k}_before']:.2f} → {out[f'distill_val_cos_{k}']:.2f}"
                            for k in ("pooled", "tokens") if f"distill_val_cos_{k}" in out)
            tqdm.write(f"distill from {cfg.frozen_decoder} ({out['distill_pairs'][0]:,} texts, "
                       f"{out['distill_pairs'][1]:,} tokens): val cosine to its soft tokens {cos}")
        return out

    # ---- stages
    def _add_lora(self) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if self.cfg.frozen_decoder:
            self.model = PeftModel.from_pretrained(self.model, str(Path(self.cfg.frozen_decoder) / LORA), is_trainable=False)
            # frozen, so folded into the weights: only the adapter needs gradients, and a step skips peft's small
            # per-layer matmuls (0.75× the step time on a 2-core CPU, `make bench`). FSDP2 has sharded them already
            self.peft = self.fsdp or not self.cfg.merge_lora
            if not self.peft:
                self.model = self.model.merge_and_unload()
        elif self.init_run is not None and not self.cfg.no_lora and (Path(self.cfg.init_from) / LORA).exists():
            self.model = PeftModel.from_pretrained(self.model, str(Path(self.cfg.init_from) / LORA), is_trainable=True)
            self.peft = True
        elif not self.cfg.no_lora:
            lc = self.cfg.lora
            targets = block_linears(self.model) if lc.target_modules == "all-linear" else lc.target_modules
            self.model = get_peft_model(self.model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                               target_modules=targets, task_type="CAUSAL_LM"))
            self.peft = True

    def lora_params(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _trainables(self) -> dict[str, torch.Tensor]:
        w = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        w.update({f"decoder.{k}": v for k, v in self.lora_params().items()})
        return w

    def _load_trainables(self, w: dict[str, torch.Tensor]) -> None:
        self.adapter.load_state_dict({k[8:]: v for k, v in w.items() if k.startswith("adapter.")})
        params = self.lora_params()
        with torch.no_grad():
            for k, v in w.items():
                if k.startswith("decoder."):
                    params[k[8:]].copy_(v)

    def _stage(self, stage: int, steps: int) -> dict:
        """Train one stage; resumes from RUN/checkpoint when it belongs to this stage."""
        cfg = self.cfg
        mode = ("context" if cfg.stage1_task == "context" else "text") if stage == 1 else "qa"
        lr = cfg.lr_stage1 if stage == 1 else cfg.lr_adapter
        groups = [{"name": name, "params": list(branch.parameters()),
                   "lr": (cfg.lr_tokens or lr) if name == "tokens" and stage == 2 else lr}
                  for name, branch in (("adapter", self.adapter.pooled), ("tokens", self.adapter.tokens))
                  if branch is not None]
        lora = list(self.lora_params().values()) if stage == 2 else []
        if lora:
            groups.append({"name": "lora", "params": lora, "lr": cfg.lr_lora})
        base_lrs = [g["lr"] for g in groups]
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        common = dict(mode=mode, shuffle_buffer=cfg.shuffle_buffer, skip_corrupt=cfg.skip_corrupt, sources=cfg.sources,
                      spec=self.spec, context=cfg.context, yesno=cfg.yesno)
        train = ItemStream(self.stores, "train", seed=cfg.seed * 1000 + stage, weights=cfg.source_weights,
                           rank=self.ranks.rank, world=self.ranks.world, **common)
        val_stream = ItemStream(self.stores, "val", seed=cfg.seed, epochs=1, **common)
        val = [it for _, it in zip(range(cfg.val_items), val_stream)]
        perm = derangement(val, seed=cfg.seed)
        val_shuffled = [replace(it, x=val[j].x) for it, j in zip(val, perm)] if mode != "text" else None
        st = {"stage": stage, "step": 0, "consumed": 0, "best_val": None, "bad_evals": 0, "stopped": False}
        best_path = self.run / f"best_stage{stage}.safetensors"
        ck = self.run / CHECKPOINT
        distributed.barrier()  # no rank looks for a checkpoint while rank 0 may still be clearing the last stage's
        if ck.exists() and read_json(ck / "state.json")["stage"] == stage:
            st, w = load_checkpoint(self.run, opt)
            self._load_trainables(w)
            self._trim_metrics(stage, st["step"])
        else:  # (re)starting the stage: drop lines an attempt killed before its first checkpoint wrote
            self._trim_metrics(stage, -1)
        if st["step"] >= steps or st["stopped"]:
            return self._finish_stage(stage, st, best_path)
        if st["step"] == 0:  # the baseline the curve falls from (not a candidate for early stopping)
            self._log({"stage": stage, "step": 0, **self.val_losses(val, val_shuffled, mode)})
        self.model.train(), self.adapter.train()
        world = self.ranks.world
        step_terms = self._ddp() if world > 1 else self.loss_terms
        bar = tqdm(total=steps, initial=st["step"], desc=f"stage {stage} ({'align' if stage == 1 else 'QA'})"
                   + (f" ×{world} processes" if world > 1 else ""), unit="step", disable=not (cfg.progress and self.ranks.main))
        t0 = time.perf_counter()
        for batch in train.batches(cfg.batch_size, skip=st["consumed"], groups=cfg.length_groups, length=self.length):
            step = st["step"]
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * _lr_factor(step, steps, cfg.warmup)
            total, n = step_terms(batch, mode)
            # the global token count and batch size: each rank's sum over the global count, times world because
            # DDP averages gradients, makes the step the one-process step on the whole global batch
            counts = distributed.all_sum(torch.tensor([n, len(batch)], dtype=torch.float64))
            n_all, items = float(counts[0]), int(counts[1])
            loss_scaled = total * (world / n_all)
            loss = distributed.all_sum(total.detach()) / n_all  # what is logged: the global batch's mean
            if not torch.isfinite(loss):
                raise UavError(f"loss became {float(loss)} at stage {stage} step {step}",
                               "lower the learning rates (--lr-adapter / --lr-lora, or lr_adapter / lr_lora in the "
                               "recipe) or check the store with `uav store verify`")
            loss_scaled.backward()
            gnorm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            st["step"] += 1
            st["consumed"] += items
            row = {"stage": stage, "step": st["step"], "loss": float(loss), "grad_norm": float(gnorm),
                   **{f"lr_{g['name']}": g["lr"] for g in opt.param_groups},
                   "items_per_s": st["consumed"] / max(time.perf_counter() - t0, 1e-9)}
            if train.corrupt or val_stream.corrupt:
                row["skipped_chunks"] = len(train.corrupt) + len(val_stream.corrupt)
            if train.bad > cfg.max_bad_fraction * max(train.seen, 1) and train.bad > 0:
                raise UavError(f"{train.bad} of {train.seen + train.bad} items had NaN/inf activations",
                               "run `uav store verify` on the store and re-harvest the broken shards")
            if st["step"] % cfg.eval_every == 0 or st["step"] == steps:
                row.update(self.val_losses(val, val_shuffled, mode))
                v = row["val_loss"]
                if st["best_val"] is None or v < st["best_val"] - 1e-4:
                    st["best_val"], st["bad_evals"] = v, 0
                    if self.ranks.main:
                        tmp = best_path.with_suffix(".tmp")
                        save_tensors(self._trainables(), tmp)
                        tmp.replace(best_path)
                else:
                    st["bad_evals"] += 1
                    st["stopped"] = st["bad_evals"] >= cfg.patience
            self._log(row)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}", **({"val": f"{row['val_loss']:.3f}"} if "val_loss" in row else {}),
                            **({"gap": f"{row['reading_gap']:+.3f}"} if "reading_gap" in row else {}))
            if self.on_step is not None:
                self.on_step(stage, st["step"], float(loss))
            done = st["step"] >= steps or st["stopped"]
            if (done or st["step"] % cfg.checkpoint_every == 0) and self.ranks.main:
                save_checkpoint(self.run, state=st, weights=self._trainables(), opt=opt)
            if done:
                break
        bar.close()
        return self._finish_stage(stage, st, best_path)

    def _ddp(self) -> Callable[[list[Item], str], tuple[torch.Tensor, int]]:
        """:meth:`loss_terms` through DistributedDataParallel over the adapter and the decoder (built per stage:
        stage 2 adds the LoRA). Only parameters that train are DDP's: a frozen LoRA (adapter-only transfer) and
        the frozen decoder weights take no part in the gradient all-reduce. With ``sharding = "fsdp"`` the frozen
        decoder blocks were sharded by FSDP2 when the decoder loaded (uav_train/sharding.py) and DDP is told to
        leave every frozen weight alone: the trainable weights, small beside the decoder, stay whole on every rank,
        so the optimizer, clipping, checkpoints and rank-0 writes are the same in both modes."""
        from torch.nn.parallel import DistributedDataParallel

        joint = _Joint(self)
        if self.fsdp:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                joint, [n for n, p in joint.named_parameters() if not p.requires_grad])
        # init_sync off: every rank built the same weights from the same seed and files; broadcasting the whole
        # frozen decoder from rank 0 would only cost time
        ddp = DistributedDataParallel(joint, device_ids=None, broadcast_buffers=False, init_sync=False)
        return lambda items, mode: ddp(items, mode)

    def _finish_stage(self, stage: int, st: dict, best_path: Path) -> dict:
        """Restore the best-validation weights of the stage (early stopping keeps the best, not the last)."""
        distributed.barrier()  # rank 0 has written the best weights
        if best_path.exists():
            self._load_trainables(load_file(str(best_path)))
        return {"stage": stage, "steps": st["step"], "best_val": st["best_val"], "early_stopped": st["stopped"]}

    def _log(self, row: dict) -> None:
        if not self.ranks.main:
            return
        with open(self.run / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _trim_metrics(self, stage: int, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be written again)."""
        p = self.run / METRICS
        if p.exists() and self.ranks.main:
            keep = [ln for ln in p.read_text().splitlines()
                    if ln.strip() and not (json.loads(ln)["stage"] == stage and json.loads(ln)["step"] > step)]
            write_text_atomic(p, "".join(ln + "\n" for ln in keep))  # a kill mid-write must not lose the log

    # ---- the whole run
    def fit(self) -> Path:
        cfg = self.cfg
        self.run.mkdir(parents=True, exist_ok=True)
        self._check_resume()
        summary = []
        if cfg.stage in ("1", "both"):
            if adapter_description(self.run / "stage1") is not None:
                self.adapter, _ = load_adapter(self.run / "stage1")
                self.adapter.to(self.device)
            else:
                if cfg.warm_start:  # the fresh adapter's closed-form start (deterministic: redone on resume)
                    summary.append(self.warm_start())
                summary.append(self._stage(1, cfg.stage1_steps))
                if self.ranks.main:
                    save_adapter(self.run / "stage1", self.adapter, {"stage": 1})
                    shutil.rmtree(self.run / CHECKPOINT, ignore_errors=True)
        if cfg.stage in ("2", "both"):
            # the LoRA init must not depend on whether stage 1 ran in this process or was loaded from disk
            torch.manual_seed(cfg.seed + 1)
            # deterministic and cheap: redone on resume, then the checkpoint's weights win (init_from: that run's win)
            if cfg.warm_start and cfg.stage == "2" and not cfg.init_from:
                summary.append(self.warm_start())
            if cfg.distill:
                summary.append(self.distill_from_frozen())
            self._add_lora()
            summary.append(self._stage(2, cfg.steps))
        self._save_final(summary)
        return self.run

    def _record(self, status: str, summary: list | None = None) -> RunRecord:
        lora_n = sum(p.numel() for p in self.lora_params().values()) if self.peft else 0
        return RunRecord(
            status=status, train=asdict(self.cfg), identity=self.cfg.identity(),
            stores=[StoreRecord.of(s) for s in self.stores], donor=self.meta["donor"], layers=self.layers,
            decoder=self.cfg.decoder, decoder_fingerprint=self.decoder_fingerprint, adapter=self.adapter.describe(),
            trainable_params={"adapter": self.adapter.n_trainable(), "lora": lora_n if not self.cfg.frozen_decoder else 0},
            lora="frozen from " + self.cfg.frozen_decoder if self.cfg.frozen_decoder else (None if not self.peft else "trained"),
            summary=summary or [],
        )

    def _check_resume(self) -> None:
        p = self.run / CONFIG
        if p.exists():
            old = RunRecord.load(p)
            if old.identity != self.cfg.identity():
                diff = [k for k in self.cfg.identity() if (old.identity or {}).get(k) != self.cfg.identity()[k]]
                raise UavError(f"{self.run} holds a run with different settings ({', '.join(diff)})",
                               "resume with the same settings, or choose a new --out")
            old.check_same_stores(self.run, self.stores)
        distributed.barrier()  # every rank has read the old record before rank 0 replaces it
        if self.ranks.main:
            self._record("training").save(p)

    def _save_final(self, summary: list) -> None:
        if not self.ranks.main:
            return
        save_adapter(self.run, self.adapter, {"stage": 2 if self.cfg.stage != "1" else 1, "donor": self.meta["donor"]})
        if self.peft or self.cfg.frozen_decoder:
            with temp_dir_for(self.run / LORA) as tmp:
                if self.cfg.frozen_decoder:  # the frozen run's LoRA as it was (here it may be merged into the weights)
                    shutil.copytree(Path(self.cfg.frozen_decoder) / LORA, tmp, dirs_exist_ok=True)
                else:
                    self.model.save_pretrained(str(tmp))
                share_mode(tmp)
                replace_dir(tmp, self.run / LORA)
        self._record("complete", summary).save(self.run / CONFIG)
        plot_losses(self.run)
        shutil.rmtree(self.run / CHECKPOINT, ignore_errors=True)


class _Joint(torch.nn.Module):
    """The adapter and the decoder as one module, so DDP sees every trainable parameter in one forward."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.adapter, self.decoder = trainer.adapter, trainer.model
        self.terms = trainer.loss_terms

    def forward(self, items: list[Item], mode: str) -> tuple[torch.Tensor, int]:
        return self.terms(items, mode)


def train(cfg: TrainConfig, on_step: Callable[[int, int, float], None] | None = None) -> Path:
    """Train (or resume, or no-op if finished) the run at ``cfg.out``; returns the run directory. A finished run
    is a no-op only when its settings *and* its stores' contents are unchanged (a path can be re-harvested)."""
    cfg.validate()
    stores = open_stores(cfg.stores, cfg.layers, cfg.readout, cfg.token_layers)  # refuse bad stores before anything is written
    check_out(cfg.out, stores)
    for st in stores:
        st.check_usable(cfg.allow_incomplete)  # damaged tables, an unfinished harvest
    budget.preflight(cfg, stores, str(pick_device(cfg.device)))  # a batch beyond the split or the memory
    cfg = with_layer_paths(cfg, stores[0])  # a run names its layers as the store does, however they were typed
    done = Path(cfg.out) / CONFIG
    if done.exists():
        old = RunRecord.load(done)
        if old.identity == cfg.identity():
            old.check_same_stores(Path(cfg.out), stores)
            if old.status == "complete":
                return Path(cfg.out)
    ranks = distributed.Ranks.from_env()
    group = distributed.init(ranks, pick_device(cfg.device, ranks.device_rank)) if ranks.world > 1 else False
    try:
        with cpu_threads(cfg.threads):
            return Trainer(cfg, on_step).fit()
    finally:
        distributed.finish(group)
