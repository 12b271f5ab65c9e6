"""The ceiling of held-out yes/no questions for a decoder: the *untuned* decoder shown the text itself (no
activations, no LoRA), forced to choose between yes and no at its first answer token.

    python examples/zeroshot_yesno.py smollm2-135m                  # the oracle data's val split
    python examples/zeroshot_yesno.py gemma3-270m --split val --data data/oracle/examples.jsonl

If a decoder cannot answer a dataset's yes/no questions from the words, no adapter will make it answer them from
activations without training on that dataset: accuracy near 0.5 here (and an AUC near 0.5, which ignores a bias
towards one answer) says the held-out targets of an activation oracle built on it are out of reach zero-shot.
Needs `uav data build --recipe oracle` first (it writes data/oracle/examples.jsonl).
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from uav_cache.models import load, resolve


def answer_ids(tok, words: list[str]) -> list[int]:
    """Single-token spellings of ``words`` (with and without a leading space)."""
    out = {t[0] for w in words for v in (w, " " + w) if len(t := tok(v, add_special_tokens=False)["input_ids"]) == 1}
    return sorted(out)


def auc(pairs: list[tuple[float, bool]]) -> float:
    """P(margin of a true "yes" > margin of a true "no"): 0.5 = the margin says nothing about the answer."""
    pos = [m for m, t in pairs if t]
    neg = [m for m, t in pairs if not t]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / max(1, len(pos) * len(neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("decoder", help="registry name, hub id or local folder")
    ap.add_argument("--data", default="data/oracle/examples.jsonl")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    model, tok = load(resolve(args.decoder, "--decoder"), dtype=torch.bfloat16)
    tok.padding_side = "left"  # the next-token logits sit at the last position of every row
    rows = [json.loads(line) for line in open(args.data)]
    qs = [("held-out dataset" if r.get("heldout_dataset") else "seen dataset", r["source"], r["text"], q["question"],
           q["answer"]) for r in rows if r["split"] == args.split for q in r["qa"] if q.get("kind") == "yesno"]
    yes, no = answer_ids(tok, ["yes", "Yes", "YES"]), answer_ids(tok, ["no", "No", "NO"])

    def prompt(text: str, question: str) -> str:
        if tok.chat_template:
            return tok.apply_chat_template([{"role": "user", "content": f"{text}\n{question}"}], tokenize=False,
                                           add_generation_prompt=True)
        return f"Text: {text}\nQuestion: {question}\nAnswer:"

    right, said_yes, margins = (collections.defaultdict(list) for _ in range(3))
    with torch.no_grad():
        for i in range(0, len(qs), 16):
            batch = qs[i:i + 16]
            enc = tok([prompt(t, q) for _, _, t, q, _ in batch], return_tensors="pt", padding=True,
                      add_special_tokens=not tok.chat_template)
            lp = model(**enc).logits[:, -1].float().log_softmax(-1)
            margin = lp[:, yes].logsumexp(-1) - lp[:, no].logsumexp(-1)
            for (group, source, _, _, gold), m in zip(batch, margin.tolist()):
                for key in (group, source):
                    right[key].append((m > 0) == (gold == "yes"))
                said_yes[group].append(m > 0)
                margins[group].append((m, gold == "yes"))
    for key in sorted(right, key=lambda k: (not k.endswith("dataset"), k)):
        extra = (f"  said yes {sum(said_yes[key]) / len(said_yes[key]):.2f}  AUC {auc(margins[key]):.2f}"
                 if key in margins else "")
        print(f"{key:24s} n {len(right[key]):4d}  accuracy {sum(right[key]) / len(right[key]):.2f}{extra}")


if __name__ == "__main__":
    main()
