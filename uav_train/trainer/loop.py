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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from uav_cache import distributed
from uav_cache.device import cpu_threads, pick_device, resolve_precision
from uav_cache.errors import UavError
from uav_cache.files import replaced_atomically, share_mode, write_text_atomic
from uav_cache.models import block_linears, embedding_norm, hidden_size, load, resolve, weights_fingerprint
from uav_cache.store import Store, check_compatible
from uav_train import budget
from uav_train.adapters import InputAdapter, MLPAdapter, PerVectorAdapter, adapter_config, build_adapter
from uav_train.distill import distill, teacher_pairs, teacher_stores
from uav_train.prompt import PromptTemplate
from uav_train.run import (CHECKPOINT, CONFIG, LORA, METRICS, RunInfo, RunRecord, StoreRecord, adapter_description,
                           check_out, load_adapter, load_checkpoint, plot_losses, read_json, replace_dir,
                           save_adapter, save_checkpoint, save_tensors, temp_dir_for)
from uav_train.stream import InputSpec, Item, ItemStream, default_form, derangement, stack_x
from uav_train.trainer.config import TrainConfig
from uav_train.trainer.losses import answer_losses
from uav_train.trainer.warm_start import fit_pooled, fit_tokens, train_mean


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def open_stores(paths: list[str], layers: list[str] | None = None, readout: str = "last",
                token_layers: list[str] | None = None, views: bool = False) -> list[Store]:
    """Open the stores and refuse a mix of donors/layers/widths: they must describe the same space. ``views``: the
    pooled layers must hold token vectors too (a view pools its read-outs from them)."""
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
    if views:
        for st in stores:
            missing = [lay for lay in (layers or st.layers) if st.resolve_layer(lay) not in st.token_layers]
            if missing:
                raise UavError(f"views pool a read-out over the positions shown, and store {st.path} keeps no token "
                               f"vectors of {', '.join(map(str, missing))}",
                               "harvest with those blocks among --token-layers (and --positions all), or leave views out")
    for st in stores:
        for r in readout.split("+"):
            st.check_readout(r)
    return stores


def with_layer_paths(cfg: TrainConfig, store: Store) -> TrainConfig:
    """``cfg`` with block indices ("23") replaced by the store's module paths ("model.layers.23")."""
    paths = lambda xs: [store.resolve_layer(x) for x in xs] if xs else xs  # noqa: E731
    return replace(cfg, layers=paths(cfg.layers), token_layers=paths(cfg.token_layers))


def input_spec(cfg: TrainConfig, store: Store) -> InputSpec:
    """What the run feeds its adapter (cfg's layers already module paths): the stream, warm start and record use it."""
    pooled = cfg.adapter != "none"
    tokens = tuple(cfg.token_layers or ())
    forms = cfg.forms or {default_form(pooled, bool(tokens)): 1.0}
    return InputSpec(layers=tuple(cfg.layers or store.layers) if pooled else (), readout=cfg.readout if pooled else None,
                     token_layers=tokens, forms=tuple(sorted(forms.items())), window=tuple(cfg.window),
                     views=pooled and cfg.views is not None)


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
        self.stores = open_stores(cfg.stores, cfg.layers, cfg.readout, cfg.token_layers, cfg.views is not None)
        cfg = self.cfg = with_layer_paths(cfg, self.stores[0])
        self.layers = cfg.layers or self.stores[0].layers
        self.spec = input_spec(cfg, self.stores[0])
        self.frozen_run = (RunInfo.open(cfg.frozen_decoder, "--frozen-decoder", lora=True).record if cfg.frozen_decoder
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
        rec = RunInfo.open(cfg.init_from, "init_from").record
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
            pooled = build_adapter(adapter_config(cfg.adapter, **cfg.adapter_options), d_in,
                                   len(spec.layers) * len(spec.readouts), d_out, self.out_norm)
        if spec.tokens:
            tokens = build_adapter(adapter_config(cfg.token_adapter, **cfg.token_adapter_options), d_in,
                                   len(spec.token_layers), d_out, self.out_norm)
        for branch, which in ((pooled, "pooled"), (tokens, "tokens")):
            if centre and branch is not None and hasattr(branch, "shift"):
                branch.shift.copy_(train_mean(self.stores, self.spec, which))
        return InputAdapter(pooled, tokens).to(self.device)

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
        group = lambda it: (it.task or "?") + ("_view" if it.view_from is not None else "")  # noqa: E731
        for g in sorted({group(it) for it in items}):
            idx = [j for j, it in enumerate(items) if group(it) == g]
            out[g] = float(sums[idx].sum() / counts[idx].sum().clamp_min(1))
        return out

    def warm_start(self, max_items: int = 4096, max_tokens: int = 20000) -> dict:
        """Closed-form warm start of a fresh adapter's skip paths (ridge regressions; train split only): the pooled
        mlp's (trainer.warm_start.fit_pooled) and the pervector adapter's (fit_tokens)."""
        cfg, out = self.cfg, {}
        if isinstance(self.adapter.pooled, MLPAdapter) and self.adapter.pooled.skip is not None:
            out.update(fit_pooled(self.adapter.pooled, self.stores, self.spec, self.model, self.template, seed=cfg.seed,
                                  shuffle_buffer=cfg.shuffle_buffer, sources=cfg.sources, views=cfg.views,
                                  max_answer_tokens=cfg.max_answer_tokens, device=self.device, max_items=max_items,
                                  target=cfg.pooled_fit))
        if isinstance(self.adapter.tokens, PerVectorAdapter) and self.adapter.tokens.skip is not None:
            out.update(fit_tokens(self.adapter.tokens, self.stores, self.spec, self.model, self.template,
                                  device=self.device, max_tokens=max_tokens))
        # say how well each fit explains its target: a low R² is the first sign a layer or donor will be hard to read
        parts = ([f"read-out → answer embeddings R² {out['warm_start_r2']:.2f} ({out['warm_start_items']:,} answers)"]
                 if "warm_start_r2" in out else [])
        if "warm_start_vocab_acc" in out:
            parts.append(f"read-out → answers' first words: {out['warm_start_vocab_acc']:.2f} right "
                         f"({out['warm_start_items']:,} answers, {out['warm_start_vocab']:,} words)")
        if "warm_start_tokens_r2" in out:
            parts.append(f"token vectors → token embeddings R² {out['warm_start_tokens_r2']:.2f} "
                         f"({out['warm_start_tokens']:,} tokens)")
        if parts and cfg.progress and self.ranks.main:
            tqdm.write("warm start (train split): " + "; ".join(parts))
        return out

    def distill_from_frozen(self) -> dict:
        """Fit the fresh adapter to the frozen run's soft tokens for the same texts (uav_train.distill): the best
        step by val cosine is kept. Deterministic, so a resume redoes it before its checkpoint's weights win."""
        rec, cfg = self.frozen_run, self.cfg
        teacher, _ = load_adapter(Path(cfg.frozen_decoder))
        theirs = teacher_stores(rec.stores)
        their_spec = replace(rec.input_spec(), views=self.spec.views)  # views pooled by each donor's own tokens
        train, val = (teacher_pairs(self.stores, self.spec, teacher, theirs, their_spec, split, device=self.device)
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
                      spec=self.spec, context=cfg.context, yesno=cfg.yesno, views=cfg.views or 0.0)
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
                        with replaced_atomically(best_path) as tmp:
                            save_tensors(self._trainables(), tmp)
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
        old = RunRecord.of(self.run)
        if old is not None:
            if old.identity != self.cfg.identity():
                diff = [k for k in self.cfg.identity() if (old.identity or {}).get(k) != self.cfg.identity()[k]]
                raise UavError(f"{self.run} holds a run with different settings ({', '.join(diff)})",
                               "resume with the same settings, or choose a new --out")
            old.check_same_stores(self.run, self.stores)
        distributed.barrier()  # every rank has read the old record before rank 0 replaces it
        if self.ranks.main:
            self._record("training").save(self.run / CONFIG)

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
    # refuse bad stores before anything is written
    stores = open_stores(cfg.stores, cfg.layers, cfg.readout, cfg.token_layers, cfg.views is not None)
    check_out(cfg.out, stores)
    for st in stores:
        st.check_usable(cfg.allow_incomplete)  # damaged tables, an unfinished harvest
    budget.preflight(cfg, stores, str(pick_device(cfg.device)))  # a batch beyond the split or the memory
    cfg = with_layer_paths(cfg, stores[0])  # a run names its layers as the store does, however they were typed
    old = RunRecord.of(cfg.out)
    if old is not None and old.identity == cfg.identity():
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
