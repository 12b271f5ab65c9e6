"""Local `evaluate` metric: ROUGE-L F via rouge_score, loadable offline with ``evaluate.load(<this file>)``.

The hub's "rouge" metric cannot be fetched here, and it only returns corpus aggregates; this one returns
per-item scores by default (``aggregate=False``) so the caller can bootstrap confidence intervals.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L F-measure (longest common subsequence), rouge_score tokenizer, optional Porter stemming."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings.
    references: list of strings, one per prediction.
    use_stemmer: Porter-stem tokens longer than 3 characters (default True).
    aggregate: if True return the mean as a float, else a list of per-item scores (default False).
Returns:
    {"rougeL": float | list[float]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer: bool = True, aggregate: bool = False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
        if aggregate:
            return {"rougeL": sum(scores) / len(scores) if scores else 0.0}
        return {"rougeL": scores}
