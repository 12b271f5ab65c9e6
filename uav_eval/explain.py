"""`uav explain`: the way a person tries the tool. The donor reads the text (loaded, read, freed), then
the decoder answers questions about the activation, with the run's adapter and LoRA."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from uav_cache.errors import UavError
from uav_cache.harvest import read_out
from uav_cache.device import pick_device
from uav_cache.models import ModelSpec, load, resolve, weights_fingerprint
from uav_eval.generate import generate
from uav_train.run import RunInfo, RunRecord, load_run


def donor_spec(rec: RunRecord, donor: str | None = None) -> ModelSpec:
    """The run's donor: ``donor`` if given, else the local folder the store recorded, else the donor's name (a
    registry name; for a local folder only its basename was recorded by older stores)."""
    if donor:
        return resolve(donor)
    path = rec.stores[0].donor_path
    for name in ([path] if path and Path(path).is_dir() else []) + [rec.donor]:
        try:
            return resolve(name)
        except UavError:
            continue
    raise UavError(f"cannot find the run's donor {rec.donor!r} (not a registry name, nor a folder here)",
                   "pass --donor PATH: the model folder the store was harvested from")


def explain(run: str, text: str, questions: list[str], *, max_new_tokens: int = 32, device: str = "auto",
            donor: str | None = None) -> list[tuple[str, str]]:
    """Answers to ``questions`` about the donor's activation on ``text``."""
    if not text.strip():
        raise UavError("--text is empty", "give the donor some text to read")
    if not questions or not all(q.strip() for q in questions):
        raise UavError("--question is empty", "ask something, e.g. --question 'What is the topic?'")
    if max_new_tokens < 1:
        raise UavError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}", "e.g. --max-new-tokens 32")
    device = str(pick_device(device))
    rec = RunInfo.open(run).record
    src = rec.stores[0]
    spec = donor_spec(rec, donor)
    if weights_fingerprint(spec) != src.weights_fingerprint:
        raise UavError(f"donor {spec.path or spec.name} here has other weights than the one the run was trained on",
                       "install the same donor weights, or pass --donor PATH to them (see the store's "
                       "weights_fingerprint)")
    donor, tok = load(spec, device=device)
    x = read_out(donor, tok, [text], rec.layers, **src.donor_reading(spec.max_length), readout=rec.readout)
    del donor, tok  # donor and decoder are never in memory together
    gc.collect()
    xs = torch.stack([x[layer] for layer in rec.layers], 1).float().unsqueeze(1).to(device)  # (1, 1, L, d)
    lr = load_run(run, device=device)
    mask = torch.ones(1, 1, dtype=torch.bool, device=device)
    with torch.no_grad():
        soft = lr.adapter(xs, mask)
    out = []
    for q in questions:
        ans = generate(lr.model, lr.tok, [lr.template.prompt(q, lr.adapter.k)], soft, stop_ids=lr.template.stop_ids(),
                       max_new_tokens=max_new_tokens)[0]
        out.append((q, ans))
    return out
