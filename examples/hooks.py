"""Ask a trained uav run about activations you captured yourself: plain transformers forward hooks, no harvest.

    python examples/hooks.py runs/self                                     # the embedded SmolLM2 as the donor
    python examples/hooks.py RUN --donor PATH --text "…" --question "…"    # any donor folder the run was trained on

The hooks sit on the blocks the run reads (``v.layers``: module paths such as ``model.layers.23``); the Verbalizer
makes from each block's output exactly what a harvest would have stored (the read-out, the token vectors) and answers
with its controls: the answer with another text's activation (shuffled), with none (no_soft), and a score.
"""

from __future__ import annotations

import argparse

import torch

from uav_cache.models import load, resolve
from uav_eval.verbalizer import Verbalizer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished uav run folder")
    ap.add_argument("--donor", default="smollm2-135m", help="the donor the run was trained on (name or folder)")
    ap.add_argument("--text", default="Arsenal beat Chelsea 2-0 at the Emirates on Saturday, with two late goals "
                                      "from their new striker.")
    ap.add_argument("--question", action="append", help="repeatable (default: the topic)")
    args = ap.parse_args(argv)

    v = Verbalizer.load(args.run, device="cpu")  # decoder, LoRA and adapter, loaded once
    model, tok = load(resolve(args.donor))  # any transformers model: here through uav's loader for the embedded GGUF
    hidden = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda mod, inp, out, name=name: hidden.update({name: out[0] if isinstance(out, tuple) else out}))
        for name in v.layers]
    with torch.no_grad():
        model(**tok(args.text, return_tensors="pt"))
    for h in hooks:
        h.remove()

    for a in v.ask({name: h[0] for name, h in hidden.items()}, args.question or ["What is the topic of this text?"]):
        print(f"Q: {a.question}\nA: {a.answer}\n   shuffled: {a.shuffled} | no activation: {a.no_soft} | "
              f"score: {a.score:+.3f}" if a.score is not None else f"Q: {a.question}\nA: {a.answer}")


if __name__ == "__main__":
    main()
