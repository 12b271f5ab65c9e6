"""Batched greedy generation from prompts whose placeholder embeddings are replaced by soft tokens.

Prompts are left-padded so every row's answer starts at the same column; soft tokens are spliced into
the input embeddings (prompt.splice) and HF ``generate`` continues from ``inputs_embeds``. An optional
``patch`` overwrites a decoder block's output at the placeholder position during the prompt pass: the
SelfIE / Patchscope way of reading an activation with no training at all.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from uav_cache.models import block_modules
from uav_train.prompt import Encoded, collate, splice


@dataclass
class Patch:
    """Overwrite the residual output of decoder block ``layer`` at the soft positions with ``vectors``."""

    layer: str  # module path of the block, e.g. model.layers.23 (peft prefixes are handled)
    vectors: torch.Tensor  # (batch, d_model)


@contextmanager
def _patched(model, patch: Patch | None, positions: torch.Tensor):
    if patch is None:
        yield
        return
    blocks = {name.split("base_model.model.")[-1]: mod for name, mod in block_modules(model)}
    block = blocks[patch.layer]

    def hook(_m, _inp, out):
        h = out[0] if isinstance(out, (tuple, list)) else out
        if h.shape[1] > 1:  # the prompt pass only; cached decoding steps see one new token
            h = h.clone()
            rows = torch.arange(h.shape[0], device=h.device)
            h[rows, positions[:, 0]] = patch.vectors.to(h.dtype).to(h.device)
            return (h, *out[1:]) if isinstance(out, (tuple, list)) else h
        return out

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _embeds_forwarded(model):
    """transformers' generate refuses ``inputs_embeds`` when the model's prepare_inputs_for_generation does not name
    it in its signature, even where the base implementation it calls forwards it (Gemma-3's multimodal class, the
    hub's 4B/12B, in transformers 5.23): a wrapper that names it, for this call only."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    fn = inner.prepare_inputs_for_generation
    if "inputs_embeds" in inspect.signature(fn).parameters:
        yield
        return

    def prepare(input_ids, *args, inputs_embeds=None, **kwargs):
        return fn(input_ids, *args, inputs_embeds=inputs_embeds, **kwargs)

    inner.prepare_inputs_for_generation = prepare
    try:
        yield
    finally:
        del inner.prepare_inputs_for_generation


@dataclass
class Scored:
    """Greedy answers with what generating them already computed: each answer's tokens (its stop token included when
    it wrote one) and their mean log-probability per token under the prompt and soft tokens that produced them."""

    texts: list[str]
    ids: list[list[int]]
    logprob: list[float]


def generate(model, tok, prompts: list[tuple[list[int], list[int]]], soft: torch.Tensor | None, *, stop_ids: list[int],
             max_new_tokens: int = 16, patch: Patch | None = None, soft_mask: torch.Tensor | None = None) -> list[str]:
    """Greedy answers for one batch. ``prompts`` are (ids, soft positions); ``soft`` is (batch, K, d) or None, with
    ``soft_mask`` (batch, K) marking each item's real soft tokens when items hold different numbers of them."""
    return _generate(model, tok, prompts, soft, stop_ids=stop_ids, max_new_tokens=max_new_tokens, patch=patch,
                     soft_mask=soft_mask, scored=False).texts


def generate_scored(model, tok, prompts: list[tuple[list[int], list[int]]], soft: torch.Tensor | None, *,
                    stop_ids: list[int], max_new_tokens: int = 16, soft_mask: torch.Tensor | None = None) -> Scored:
    """:func:`generate`, plus each answer's tokens and log-probability, read off the logits the decoding steps made:
    the evaluation's calibration needs no second forward pass for the activation that produced the answer."""
    return _generate(model, tok, prompts, soft, stop_ids=stop_ids, max_new_tokens=max_new_tokens, patch=None,
                     soft_mask=soft_mask, scored=True)


@torch.no_grad()
def _generate(model, tok, prompts, soft, *, stop_ids, max_new_tokens, patch, soft_mask, scored: bool) -> Scored:
    encs = [Encoded(ids, ids, pos) for ids, pos in prompts]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(encs, tok.pad_token_id, left=True).items()}
    emb = model.get_input_embeddings()(batch["input_ids"])
    if soft is not None and soft.shape[1]:
        emb = splice(emb, soft.to(device), batch["soft_positions"],
                     soft_mask.to(device) if soft_mask is not None else None, batch["soft_mask"])
    with _patched(model, patch, batch["soft_positions"]), _embeds_forwarded(model):
        out = model.generate(inputs_embeds=emb, attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop_ids, pad_token_id=tok.pad_token_id,
                             output_logits=scored, return_dict_in_generate=True)
    seqs = out.sequences  # the new tokens only: generation started from embeddings
    if scored:  # (batch, steps): each written token's log-probability, from the raw logits of the step that wrote it
        lp = torch.stack([torch.log_softmax(s.float(), -1).gather(1, seqs[:, j, None].to(s.device))[:, 0]
                          for j, s in enumerate(out.logits)], 1).cpu()
    texts, ids, logprob = [], [], []
    for r, row in enumerate(seqs.tolist()):
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        if scored:
            n = min(cut + 1, len(row))  # the stop token is part of the answer
            ids.append(row[:n])
            logprob.append(float(lp[r, :n].double().mean()))
    return Scored(texts, ids, logprob)
