"""What a store keeps of each text besides its token ids: pooled read-outs (one vector per text, layer and read-out:
:data:`READOUTS`, computed by :func:`pool`) and, where asked, token vectors (every token or a window of them:
:data:`POSITIONS`). The harvest, the Verbalizer and anything else that turns a block's states into what a store
holds call these, so a read-out means the same everywhere.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from uav_cache.errors import UavError

# Read-outs: which token positions one stored vector per (row, layer) summarises. Each is its own (n, d) array,
# so a pooled store costs what a last-token store costs, and readers choose by name, never by array path.
READOUTS = {
    "last": "the block's residual output at the last token of the text",
    "mean": "the mean of the block's residual output over every token but the first: position 0 carries the "
            "attention sink (norm ~26,000 in SmolLM2, the BOS in BOS-prefixed tokenizers) and would dominate a plain "
            "mean; a one-token text has only position 0, so its mean is that vector (examples/n_tokens = 1)",
}
DEFAULT_READOUTS = ("last", "mean")

# Which token vectors a store keeps besides its pooled read-outs. Token vectors cost ~(tokens per text) × a pooled
# row, so a store can keep every token or a window of W consecutive tokens per text (placed by a hash of the
# example id: deterministic, spread over the text), which bounds the store at W vectors per text and layer.
POSITIONS = {
    "last": "pooled read-outs only (one vector per text, layer and read-out)",
    "all": "also every token's vector",
    "window:W": "also W consecutive tokens' vectors per text (the whole text when it is shorter), e.g. window:16",
}


def parse_positions(positions: str) -> int | None:
    """How many token vectors per text a ``positions`` value keeps: 0 for last, None (all of them) for all, W for
    window:W. Anything else is refused with the valid forms."""
    if positions == "last":
        return 0
    if positions == "all":
        return None
    kind, _, w = str(positions).partition(":")
    if kind == "window" and w.isdigit() and int(w) >= 1:
        return int(w)
    raise UavError(f"unknown --positions {positions!r}", "use last, all, or window:W with W ≥ 1 (e.g. window:16)")


def window_start(example_id: str, n_tokens: int, width: int | None) -> int:
    """First stored token of a row: 0 for all; for window:W a position in [0, n − W] from the id's hash, so the
    windows of a store cover every part of the texts and a re-harvest picks the same ones."""
    if width is None or n_tokens <= width:
        return 0
    return int(hashlib.sha256(f"window/{example_id}".encode()).hexdigest()[:8], 16) % (n_tokens - width + 1)


def readouts_of(meta: dict) -> list[str]:
    """The read-outs a store holds (a format-1 store without a ``readouts`` key holds only ``last``)."""
    return list(meta.get("readouts") or ["last"])


def token_layers_of(meta: dict) -> list[str]:
    """The layers whose token vectors a store keeps (a format-1 store without a ``token_layers`` key: every layer, or
    none for positions=last)."""
    if "token_layers" in meta:
        return list(meta["token_layers"])
    return [] if meta.get("positions", "last") == "last" else list(meta["layers"])


def pool(hidden: torch.Tensor, mask: torch.Tensor, readout: str) -> torch.Tensor:
    """One read-out of a batch of texts' states: ``hidden`` (B, S, d), ``mask`` (B, S) true at the positions that
    count (a text's tokens, or a range of them) → (B, d), in ``hidden``'s dtype. ``last``: the last position that
    counts. ``mean``: the mean over the positions that count but position 0, the attention sink, unless position 0 is
    the only one (a one-token text). Every row needs a position that counts."""
    mask = mask.to(hidden.device).bool()
    if not bool(mask.any(1).all()):
        raise ValueError("pool: a row of the mask has no position that counts")
    pos = torch.arange(hidden.shape[1], device=hidden.device)
    if readout == "last":
        last = torch.where(mask, pos, -1).max(1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if readout == "mean":
        body = mask & (pos >= 1)
        w = torch.where(body.any(1, keepdim=True), body, mask).to(hidden.dtype)
        return (hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    raise UavError(f"unknown read-out {readout!r}", f"use one of: {', '.join(READOUTS)}")


def view_index(spans: np.ndarray, positions: np.ndarray, first_char: int) -> np.ndarray:
    """Which of a row's stored token positions a view from character ``first_char`` on shows: those whose token
    begins there or later (tokens that are no part of the text, span -1, never). Indices into ``positions``; position
    0, the attention sink, is never among them, since a view starts after a character of the text."""
    starts = spans[positions][:, 0]
    return np.flatnonzero(starts >= max(int(first_char), 1))
