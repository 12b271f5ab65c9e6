"""A fresh adapter's start from the training data, before its first step: the centre a centring adapter subtracts
(:func:`train_mean`) and the closed-form fit of the skip paths (:func:`fit_pooled`, :func:`fit_tokens`).

Both read the train split only, so nothing of val/test leaks into the weights, and both are deterministic: a resumed
run redoes them, then its checkpoint's weights win.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_train.adapters import MLPAdapter, PerVectorAdapter
from uav_train.prompt import PromptTemplate
from uav_train.stream import InputSpec, ItemStream, read_rows, stack_x


def train_mean(stores: list[Store], spec: InputSpec, which: str = "pooled", max_rows: int = 8192,
               max_tokens: int = 65536) -> torch.Tensor:
    """(layers, d) mean over the train split of the run's read-out (``pooled``: at most ``max_rows`` rows) or of
    its stored token vectors (``tokens``: at most ``max_tokens`` of them), in row order: the centre a centring
    adapter subtracts."""
    n_layers = len(spec.layers) * len(spec.readouts) if which == "pooled" else len(spec.token_layers)
    only = replace(spec, token_layers=()) if which == "pooled" else replace(spec, readout=None)
    total, n = torch.zeros(n_layers, stores[0].meta["d_model"], dtype=torch.float64), 0
    cap = max_rows if which == "pooled" else max_tokens
    for st in stores:
        rows = st.split_rows("train")
        for a in range(0, len(rows), 512):
            if n >= cap:
                break
            for ra in read_rows(st, rows[a:a + 512], only):
                x = ra.pooled.unsqueeze(0) if which == "pooled" else ra.tokens
                total += x.double().sum(0)
                n += len(x)
    return (total / max(n, 1)).float()


VOCAB_MAX_WORDS = 4  # the vocab fit's answers: a label, a name or a short fact (a summary's first word says little)


@torch.no_grad()
def fit_pooled(branch: MLPAdapter, stores: list[Store], spec: InputSpec, model, template: PromptTemplate, *,
               seed: int, shuffle_buffer: int, sources: list[str] | None, max_answer_tokens: int | None,
               device: torch.device, max_items: int = 4096, views: float | None = None, target: str = "ridge") -> dict:
    """The pooled mlp's skip path, fitted on the training answers but yes/no ones, each from the read-out its item
    shows (a view's own, where views are on). ``ridge``: a ridge regression to each answer's mean input embedding
    (its first ``max_answer_tokens`` tokens): for a label the target *is* the label word's embedding, so the first
    soft tokens already say "sport" in the decoder's own vocabulary. ``vocab``: a linear map trained with a softmax
    over the decoder's input embeddings of the answers' first tokens (answers of up to VOCAB_MAX_WORDS words): where
    one read-out answers several questions, or a name spans several tokens, the soft tokens point at the word
    itself rather than at an average of embeddings, which the decoder can copy."""
    only = replace(spec, token_layers=(), forms=(("pooled", 1.0),))
    # no yes/no answers: "yes" follows from the question and the activation together, not from the activation
    stream = ItemStream(stores, "train", mode="qa", seed=seed, epochs=1, shuffle_buffer=shuffle_buffer,
                        sources=sources, spec=only, yesno=0.0, views=views or 0.0)
    emb = model.get_input_embeddings()
    vs, ts, first = [], [], []
    for batch in stream.batches(256):
        if target == "vocab":
            batch = [it for it in batch if len(it.answer.split()) <= VOCAB_MAX_WORDS]
            if not batch:
                continue
        x = stack_x(batch).to(device)
        vs.append(branch.features(x.pooled.unsqueeze(1), torch.ones(len(batch), 1, dtype=torch.bool, device=device)))
        for it in batch:
            ids = template.answer_tokens(it.answer, max_answer_tokens) or [template.placeholder_id]
            ts.append(emb(torch.tensor(ids, device=device)).float().mean(0))
            if target == "vocab":  # the answer's first word as it stands mid-text: a whole word, not a fragment
                first.append((template.tok(" " + it.answer.strip(), add_special_tokens=False)["input_ids"] or ids)[0])
        if sum(len(v) for v in vs) >= max_items:
            break
    if not vs:
        raise UavError("the warm start found no training answer to fit the pooled read-out to",
                       'give the train split short answers (labels, names), or use pooled_fit = "ridge"')
    if target == "vocab":
        acc, n_words = branch.warm_start_vocab(torch.cat(vs), torch.tensor(first, device=device),
                                               emb.weight.detach().float(), seed=seed)
        return {"warm_start_items": len(first), "warm_start_vocab": n_words, "warm_start_vocab_acc": acc}
    r2 = branch.warm_start(torch.cat(vs), torch.stack(ts))
    return {"warm_start_items": len(ts), "warm_start_r2": r2}


@torch.no_grad()
def fit_tokens(branch: PerVectorAdapter, stores: list[Store], spec: InputSpec, model, template: PromptTemplate, *,
               device: torch.device, max_tokens: int = 20000) -> dict:
    """The pervector adapter's skip path, by ridge regression from each token's vectors to the decoder's embedding of
    that token's own text (self-supervised: no labels), so a window of soft tokens starts out as the decoder's own
    reading of those words, whatever the donor's tokenizer. The token's text comes from the store's character spans
    (with the space before it, as the decoder would write it mid-sentence), tokenized by the decoder; the target is
    the mean of those pieces' input embeddings."""
    emb, tok = model.get_input_embeddings(), template.tok
    only = replace(spec, readout=None, layers=())
    cache: dict[str, torch.Tensor] = {}
    vs, ts = [], []
    n = 0
    for st in stores:
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
                        ids = tok(piece, add_special_tokens=False)["input_ids"] or [template.placeholder_id]
                        cache[piece] = emb(torch.tensor(ids, device=device)).float().mean(0)
                    keep.append(j)
                    targets.append(cache[piece])
                if keep:
                    vs.append(branch.features(ra.tokens[keep].float().unsqueeze(0).to(device))[0])
                    ts.append(torch.stack(targets))
                    n += len(keep)
    if not vs:
        raise UavError("the train split has no token that is part of its text", "check the store's texts")
    r2 = branch.warm_start(torch.cat(vs), torch.cat(ts))
    return {"warm_start_tokens": n, "warm_start_tokens_r2": r2}
