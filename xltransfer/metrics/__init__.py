"""The official XTREME(-R) metrics, on the 0-100 scale the official scorer prints.

Every function takes `(targets, predictions)` first and returns a dict of floats, so each one
is also a seqio `metric_fn` (MLQA needs its language: `mlqa_metric_fn(lang)`).

  accuracy(targets, predictions)            -> {"accuracy"}                 XNLI, XCOPA, Tatoeba
  seqeval_f1(targets, predictions)          -> {"f1", "precision", "recall"} UD-POS, WikiANN
  squad_f1_em(targets, predictions)         -> {"f1", "exact_match"}        XQuAD, TyDiQA-GoldP
  mlqa_f1_em(targets, predictions, lang)    -> {"f1", "exact_match"}        MLQA
  map_at_k(gold_ids, ranked_ids, k=20)      -> {"map@20"}                   Mewsli-X, LAReQA
  bucc_f1 / bucc_optimal_threshold          BUCC 2018 (XTREME v1)
"""
from xltransfer.metrics.qa import mlqa_f1_em
from xltransfer.metrics.qa import mlqa_metric_fn
from xltransfer.metrics.qa import normalize_mlqa_answer
from xltransfer.metrics.qa import normalize_squad_answer
from xltransfer.metrics.qa import squad_f1_em
from xltransfer.metrics.retrieval import average_precision_at_k
from xltransfer.metrics.retrieval import bucc_extract
from xltransfer.metrics.retrieval import bucc_f1
from xltransfer.metrics.retrieval import bucc_optimal_threshold
from xltransfer.metrics.retrieval import bucc_tuned_f1
from xltransfer.metrics.retrieval import lareqa_map_at_k
from xltransfer.metrics.retrieval import map_at_k
from xltransfer.metrics.retrieval import mewslix_map_at_k
from xltransfer.metrics.tagging import seqeval_f1

__all__ = [
    "accuracy", "average_precision_at_k", "bucc_extract", "bucc_f1", "bucc_optimal_threshold",
    "bucc_tuned_f1", "lareqa_map_at_k", "map_at_k", "mewslix_map_at_k", "mlqa_f1_em",
    "mlqa_metric_fn", "normalize_mlqa_answer", "normalize_squad_answer", "seqeval_f1",
    "squad_f1_em",
]


def accuracy(targets, predictions) -> dict:
  """Share of predictions equal to their target (compared with ==), 0-100.

  The official scorer compares the stripped lines of two files (or XCOPA's "label" values);
  callers that read files should strip lines the same way.
  """
  targets = list(targets)
  predictions = list(predictions)
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not predictions:
    raise ValueError("no predictions to score")
  correct = sum(int(p == t) for p, t in zip(predictions, targets))
  return {"accuracy": float(correct) / len(predictions) * 100}
