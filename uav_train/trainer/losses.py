"""The one loss: next-token cross-entropy on the answer tokens, given the adapter's soft tokens where each item's prompt
puts them. Training, validation and the Verbalizer's scores all read it from :func:`answer_losses`."""

from __future__ import annotations

import torch

from uav_cache.device import resolve_precision
from uav_train.adapters import AdapterInput, InputAdapter
from uav_train.prompt import IGNORE, PromptTemplate, collate, splice


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
    tokens, their count). Training, validation and the Verbalizer's scores (log-probability of an answer) all call
    this. ``precision`` as TrainConfig's: bf16 runs under autocast (auto: on CUDA)."""
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
