"""A synthetic store for the store-format tests: examples, metadata and values written without a donor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from uav_cache import store as st
from uav_cache.store import FORMAT, FORMAT_VERSION, StoreWriter, to_bits

D = 16
LAYERS = ["model.layers.1", "model.layers.3"]


def synth_examples(n: int) -> list[dict]:
    return [{"id": f"ex{i:03d}", "text": f"text number {i}", "task": "gist", "source": "synthetic",
             "split": ("train", "val", "test")[i % 3], "qa": [{"question": "q?", "answer": str(i)}]}
            for i in range(n)]


def synth_token_ids(n: int) -> list[list[int]]:
    return [list(range(100 + i, 100 + i + 2 + i % 5)) for i in range(n)]


def synth_meta(n: int = 40, shard_rows: int = 8, dtype: str = "fp16", layers=LAYERS, positions: str = "last",
          **over) -> dict:
    ex = synth_examples(n)
    sizes = {s: sum(e["split"] == s for e in ex) for s in ("train", "val", "test")}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "uav_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00", "donor": "synthetic-donor", "family": "llama",
        "weights_fingerprint": "w" * 64, "n_layers": 4, "layers": list(layers), "positions": positions,
        "dtype": dtype, "d_model": D,
        "tokenizer": {"name": "tok", "vocab_sha256": "v" * 64, "special_tokens_sha256": "s" * 64,
                      "chat_template_sha256": None},
        "donor_input": "raw", "max_length": 64,
        "dataset": {"name": "synthetic", "fingerprint": "f" * 64, "split_sizes": sizes, "n_examples": n},
        "dataset_fingerprint": "f" * 64, "n_rows": n, "shard_rows": shard_rows, "chunk_rows": 4,
        "n_shards": (n + shard_rows - 1) // shard_rows, "n_tokens": sum(map(len, synth_token_ids(n))),
    }
    meta.update(over)
    return meta


def open_writer(path: Path, meta: dict) -> StoreWriter:
    n = meta["n_rows"]
    return StoreWriter.create_or_open(path, meta, synth_examples(n), synth_token_ids(n), [i % 7 == 0 for i in range(n)])


def synth_values(n: int, dtype: str, seed: int, layer: int = 0) -> torch.Tensor:
    """Random finite values spanning the dtype's range, including -0.0, subnormals and the largest finite."""
    g = torch.Generator().manual_seed(seed * 100 + layer)
    x = torch.randn(n, D, generator=g) * torch.exp2(torch.randint(-20, 12, (n, D), generator=g).float())
    x[0, 0], x[0, 1] = -0.0, 1e-7  # negative zero; a subnormal in fp16
    x[0, 2] = 65504.0 if dtype == "fp16" else 3.0e38
    return x.to(st.STORAGE_DTYPES[dtype])


def fill_shards(w: StoreWriter, shards=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write (and commit) the given shards with deterministic values; returns every layer's full tensor."""
    m = w.meta
    full = {layer: synth_values(m["n_rows"], m["dtype"], seed, k) for k, layer in enumerate(m["layers"])}
    for s in (range(m["n_shards"]) if shards is None else shards):
        a, b = w.shard_range(s)
        w.write_shard(s, {layer: to_bits(full[layer][a:b], m["dtype"]) for layer in m["layers"]})
    return full


def as_bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy()
