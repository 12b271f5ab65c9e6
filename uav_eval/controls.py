"""What each method shows the decoder (the names and meanings are in methods.py): soft tokens from the run's
adapter (``uav``, and ``shuffled`` with another item's activation), none (``no_soft``, ``base_only``), a fresh
adapter, the raw text, or a SelfIE hidden-state patch; with the run's LoRA on or bypassed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from uav_cache.errors import UavError
from uav_cache.models import hidden_size
from uav_eval.generate import Patch
from uav_train.adapters import AdapterInput, adapter_from_description
from uav_eval.methods import BYPASS_LORA, CONTROLS, METHODS
from uav_train.run import LoadedRun


@dataclass
class Setup:
    """One method's inputs for a batch: prompts, soft tokens or a hidden-state patch, LoRA on or off."""

    prompts: list[tuple[list[int], list[int]]]
    soft: torch.Tensor | None
    patch: Patch | None
    lora: bool
    soft_mask: torch.Tensor | None = None  # (B, K): each item's real soft tokens (items may show different numbers)


def selfie_applicable(lr: LoadedRun) -> bool:
    """SelfIE patches the activation into the same model that produced it: same weights, however named."""
    rec = lr.info.record
    same = rec.decoder_weights() == rec.stores[0].weights_fingerprint
    return same and rec.donor_width == hidden_size(lr.model) and rec.input_spec().pooled


def check_methods(methods: list[str], lr: LoadedRun | None = None) -> list[str]:
    """Refuse unknown names; with a loaded run, also drop what cannot apply to it (selfie needs donor == decoder:
    there is no layer to patch into otherwise)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UavError(f"unknown control(s) {bad}", f"use any of {', '.join(CONTROLS)}")
    if twice := sorted({m for m in methods if methods.count(m) > 1}):  # it would run, and be reported, twice
        raise UavError(f"control(s) {twice} given twice", "list each control once")
    return [m for m in methods if lr is None or m != "selfie" or selfie_applicable(lr)]


class MethodRunner:
    """Builds :class:`Setup` per method; keeps the random adapter fixed across batches."""

    def __init__(self, lr: LoadedRun, seed: int = 1234):
        self.lr = lr
        torch.manual_seed(seed)
        self.random_adapter = adapter_from_description(lr.adapter.describe()).to(next(lr.adapter.parameters()).device).eval()

    def setup(self, method: str, items, x: AdapterInput) -> Setup:
        """``x`` is the items' own adapter input, except for ``shuffled``, where the caller passes the deranged
        items' (the prompts stay the items' own)."""
        t, lr = self.lr.template, self.lr
        if method in ("uav", "shuffled", "random_adapter"):
            # shuffled is exactly uav with another item's activation: the trained adapter, never the random one
            adapter = self.random_adapter if method == "random_adapter" else lr.adapter
            with torch.no_grad():
                soft, mask = adapter(x)
            return Setup([t.prompt(it.question, int(n)) for it, n in zip(items, mask.sum(1).tolist())], soft, None,
                         True, mask)
        if method == "no_soft":
            return Setup([t.prompt(it.question, 0) for it in items], None, None, True)
        if method == "base_only":
            return Setup([t.prompt(it.question, 0) for it in items], None, None, method not in BYPASS_LORA)
        if method == "input_text":
            return Setup([t.prompt(it.question, 0, context_text=it.text) for it in items], None, None, True)
        if method == "selfie":
            layer = lr.info.record.layers[0]
            return Setup([t.prompt(it.question, 1) for it in items], None, Patch(layer, x.pooled[:, 0, :]),
                         method not in BYPASS_LORA)
        raise UavError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")

    @contextmanager
    def lora(self, on: bool):
        """The run's LoRA active or bypassed (peft's disable_adapter), for the base-model methods."""
        if on or not self.lr.has_lora:
            yield
        elif self.lr.merged:
            raise UavError("this run's LoRA was merged into the decoder, so it cannot be bypassed",
                           "load the run with load_run(..., merge=False) for base_only or selfie")
        else:
            with self.lr.model.disable_adapter():
                yield
