"""Chunk F1 for UD-POS and WikiANN, made by the same seqeval call as the official scorer.

The XTREME(-R) scorer calls `seqeval.metrics.{f1,precision,recall}_score(labels, predictions)`
with seqeval's defaults (conlleval-compatible chunking, micro average) on the list of sentences,
so this module makes exactly that call (seqeval 1.2.2 is pinned in setup.py) rather than
re-deriving it. What that means for inputs that are not clean IOB2:

- Sentences are joined with an "O" between them, so a chunk never crosses a sentence boundary.
- "I-X" after "O" (or after a different type) starts a chunk, as in conlleval.
- POS tags have no prefix: seqeval reads the first character as the chunk tag and the rest as
  the type ("NOUN" is tag "N", type "OUN"). Runs of the same POS tag therefore form one chunk,
  CCONJ and SCONJ share the type "CONJ", and so on. Scores of POS tagging are "chunk F1" in
  that sense, which is what the official numbers are.
- With no chunk at all in targets and predictions the scores are 0 (seqeval's zero division).
"""
import warnings


def _check_aligned(targets, predictions) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} target sentences but {len(predictions)} predicted")
  for index, (target, prediction) in enumerate(zip(targets, predictions)):
    if len(target) != len(prediction):
      raise ValueError(
          f"sentence {index} has {len(target)} target tags but {len(prediction)} predicted; "
          "seqeval needs one predicted tag per token")


def seqeval_f1(targets, predictions) -> dict:
  """seqeval micro F1, precision and recall (0-100) over sentences of tags.

  Args:
    targets: list of sentences, each a list of gold tags.
    predictions: list of sentences, each a list of predicted tags, aligned with `targets`.
  """
  # Imported here: seqeval pulls in scikit-learn (about a second), which scoring other tasks
  # or importing the metrics module should not pay for.
  from seqeval import metrics as seqeval_metrics  # pylint: disable=g-import-not-at-top
  targets = [list(sentence) for sentence in targets]
  predictions = [list(sentence) for sentence in predictions]
  _check_aligned(targets, predictions)
  with warnings.catch_warnings():
    # seqeval warns on every tag without a B-/I- prefix (all of POS) and on zero division.
    warnings.simplefilter("ignore")
    f1 = seqeval_metrics.f1_score(targets, predictions)
    precision = seqeval_metrics.precision_score(targets, predictions)
    recall = seqeval_metrics.recall_score(targets, predictions)
  return {"f1": float(f1) * 100, "precision": float(precision) * 100,
          "recall": float(recall) * 100}
