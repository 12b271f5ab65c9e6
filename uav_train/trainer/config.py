"""A training run's settings: :class:`TrainConfig` (a recipe's ``[train]`` table; `uav train`'s flags override it),
checked in full before anything is written, and the part of it a resume must match (:meth:`TrainConfig.identity`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from uav_cache.config import check_bound, from_table, read_recipe, refuse_unknown
from uav_cache.device import pick_device
from uav_cache.errors import UavError
from uav_cache.store import READOUTS
from uav_train.adapters import TOKEN_KINDS, adapter_config
from uav_train.stream import FORMS, default_form

RECIPE_SECTIONS = ("data", "donors", "train", "runs", "eval", "seeds")  # a recipe's top-level keys (see demo.toml)
PRECISIONS = ("auto", "fp32", "bf16")
SHARDINGS = ("ddp", "fsdp")
# The TrainConfig fields that `uav train` takes as flags (uav_train/cli.py; tests/test_sweep.py holds the two
# together): a fix line names a flag only where one exists
FLAGS = frozenset({
    "decoder", "out", "adapter", "stage", "steps", "stage1_steps", "batch_size", "length_groups", "lr_adapter",
    "lr_lora", "frozen_decoder", "init_from", "distill", "no_lora", "layers", "readout", "sources", "seed", "device",
    "grad_checkpointing", "token_layers", "token_adapter", "lr_tokens", "context", "yesno", "window", "forms",
    "warm_start", "merge_lora", "stage1_task", "precision", "sharding", "threads", "skip_corrupt", "allow_incomplete",
})


def how_to_set(name: str) -> str:
    """Where a user sets a training field: its `uav train` flag when it has one, and always the recipe key."""
    flag = f"--{name.replace('_', '-')} or " if name in FLAGS else ""
    return f"{flag}{name} = … in the recipe's [train] table"


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
    # suits a pooled adapter undoes its closed-form fit
    lr_tokens: float | None = None
    warmup: int = 10  # linear warm-up steps, then cosine to 10%
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    no_lora: bool = False  # frozen decoder: only the adapter trains, in both stages
    frozen_decoder: str | None = None  # RUN_A: reuse its LoRA frozen, train only a new adapter (transfer)
    # RUN_A: start from its adapter and LoRA, both training (a curriculum: a run that names labels, then yes/no
    # questions about them); the same decoder, donor, inputs and adapter as RUN_A, no warm start
    init_from: str | None = None
    # with frozen_decoder: this many decoder-free steps first fit the new adapter to the soft tokens RUN_A's adapter
    # emits for the same texts (uav_train.distill; both stores must hold the same dataset), then stage 2 as usual
    distill: int = 0
    # fold a LoRA that no longer trains into the decoder's weights (peft's merge_and_unload): the frozen one of a
    # transfer run, and any run's at evaluation and in `uav explain`; faster steps and generation (`make bench`
    # measures both), in a bf16 run at the price of W + BA rounded once to bf16. False keeps peft's layers, whose
    # LoRA path runs in fp32 beside the bf16 weights
    merge_lora: bool = True
    # stored layers to read, module paths or block indices (default: every stored layer); see `uav store info`
    layers: list[str | int] | None = None
    # stored read-out that feeds the adapter (store.READOUTS): last (last token) or mean (mean over the tokens after
    # the sink), or both joined by "+" ("mean+last": the adapter reads each layer's two vectors); `uav store probe`
    # shows which carries more
    readout: str = "last"
    # views (stream.RowActs.view): unset, every item shows the whole text. Set, an example's shown_from places its
    # items' view (the positions from there on, with read-outs pooled over them only: the pooled layers need stored
    # token vectors), and this share of the other QA items whose answer the text states are shown the positions after
    # its last mention: questions whose answer lies outside what is shown (0: shown_from only)
    views: float | None = None
    sources: list[str] | None = None  # train (and validate) on these sources only (default: all)
    source_weights: dict[str, float] = field(default_factory=dict)  # source → times each of its items is seen per epoch
    max_answer_tokens: int | None = None  # stage-2 targets cut to N tokens (long gist answers cost the most per step)
    # before the first stage, fit the skip paths in closed form: the pooled mlp's to the mean embedding of each
    # answer, the pervector adapter's to the decoder's embedding of each token's own text (skip = true in both)
    warm_start: bool = False
    # the pooled skip path's fit: ridge (to the mean input embedding of each answer) or vocab (a softmax over the
    # decoder's vocabulary on each short answer's first token: the soft tokens then point at the answer's word
    # rather than at an average of several)
    pooled_fit: str = "ridge"
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
            check_bound(name, value, low, f"set {how_to_set(name)}", strict)

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
        parts = self.readout.split("+") if isinstance(self.readout, str) else [self.readout]
        if not all(p in READOUTS for p in parts) or len(set(parts)) != len(parts):
            raise UavError(f"unknown read-out {self.readout!r}",
                           f"use one of {', '.join(READOUTS)}, or several joined by + (e.g. mean+last)")
        if self.views is not None:
            if not 0 <= self.views <= 1:
                raise UavError(f"views must be a share in [0, 1], got {self.views}",
                               f"set {how_to_set('views')} (e.g. 0.5), or leave it out for no views")
            if self.adapter == "none":
                raise UavError("views pool a read-out over the positions shown, and this run has no pooled adapter",
                               "set a pooled adapter, or leave views out")
        if self.pooled_fit not in ("ridge", "vocab"):
            raise UavError(f"pooled_fit must be ridge or vocab, got {self.pooled_fit!r}", 'e.g. pooled_fit = "vocab"')
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
        forms = self.forms or {default_form(ac is not None, tc is not None): 1.0}
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
        # at these values a setting is left out: a record written without the key meant exactly them, so such a run
        # still resumes (and a finished one stays finished)
        for k, implied in (("precision", "auto"), ("length_groups", 1), ("init_from", None), ("yesno", 1.0),
                           ("distill", 0), ("merge_lora", True), ("views", None), ("pooled_fit", "ridge")):
            if d[k] == implied:
                d.pop(k)
        return d