"""What every way of evaluating shares: the context it predicts in, whether a split carries gold,
the records written to predictions files, and seqio tasks' examples and metrics.

Gold is decided before any inference (see evaluator.py's docstring): `gold_status` from the
source's provenance, or, without one, from the examples' targets.
"""
import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import seqio

from xltransfer import metrics as metrics_lib
from xltransfer.data import gold as gold_lib
from xltransfer.errors import DataFormatError, UserError
from xltransfer.evaluation import inference as inference_lib
from xltransfer.evaluation.eval_tasks import EvalTask
from xltransfer.evaluation.settings import EvalSettings

# Record fields that say which examples are not independent (docs/interfaces.md,
# "Evaluation outputs"): written where the example carries them, non-empty.
CLUSTER_FIELDS = ("item", "paragraph")


class NoGoldError(UserError):
  """A task has no gold and `EvalSettings.require_gold` is set; `reason` says why."""

  def __init__(self, task_name: str, reason: str):
    self.reason = reason
    super().__init__(f"{task_name}: no gold to score, so no metric (require_gold): {reason}")


@dataclasses.dataclass
class Context:
  """What a way of evaluating predicts with: the inference runner (`inference.Inference`), the
  settings, and a cache shared by the tasks of one evaluation (retrieval's candidate pools)."""
  runner: Any
  settings: EvalSettings
  cache: Dict[Any, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Way:
  """A way of evaluating: `predict(context, task, split)` -> (provenance, no_gold, records) and
  `metrics(task, records)` -> {metric: value} over labelled records."""
  predict: Callable[[Context, EvalTask, str], tuple]
  metrics: Callable[[EvalTask, List[dict]], Dict[str, float]]


def text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def cluster_fields(ex) -> dict:
  return {k: text(ex[k]) for k in CLUSTER_FIELDS if k in ex and text(ex[k])}


def jsonable(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [jsonable(v) for v in value.tolist()]
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _is_unlabeled(target) -> bool:
  if isinstance(target, str):
    return target == ""
  if isinstance(target, (list, tuple)):
    return all(_is_unlabeled(t) for t in target)
  return target is None


def gold_status(provenance: Optional[gold_lib.Provenance], targets: Sequence,
                where: str) -> Optional[str]:
  """None when a split's examples carry gold; otherwise why not (see evaluator.py's docstring).

  `targets`: the examples' post-processed targets (gold id sets for retrieval); `where` names
  the task and split for messages. Raises DataFormatError for an empty or partly labelled split.
  """
  location = provenance.location if provenance is not None else where
  if not targets:
    raise DataFormatError(location, None, f"{where} has no examples to evaluate")
  if provenance is not None and not provenance.labelled:
    return provenance.no_gold or f"{provenance.describe()} carries no gold"
  empty = sum(_is_unlabeled(list(t) if isinstance(t, (set, frozenset)) else t)
              for t in targets)
  if provenance is None and empty == len(targets):
    return f"every example of {where} has an empty target"
  if empty:
    said = f"{provenance.describe()} is said to be labelled, but " if provenance else ""
    raise DataFormatError(location, None,
                          f"{said}{empty} of {len(targets)} examples of {where} have no gold "
                          "target; a metric over part of a split is not the split's metric")
  return None


def check_gold(context: Context, task: EvalTask, split: str, provenance, targets) -> Optional[str]:
  """`gold_status`, raising NoGoldError for a task without gold under `require_gold`."""
  no_gold = gold_status(provenance, targets, f"task {task.name} ({split} split)")
  if no_gold is not None and context.settings.require_gold:
    raise NoGoldError(task.name, no_gold)
  return no_gold


# ---- seqio tasks (generation and rank classification) ----

def _token_accuracy(target, prediction) -> float:
  pairs = list(zip(target, prediction))
  return 100.0 * sum(t == p for t, p in pairs) / max(1, len(target))


def example_scorer(metric_fns, target, prediction):
  """A function (target, prediction) -> the example's 0-100 contribution to the metric.

  seqeval F1 is not a mean over sentences, so tagging examples get their token accuracy; QA
  gets the example's F1; other metrics score the single example.
  """
  if not metric_fns:
    return lambda t, p: None
  main = metric_fns[0]
  keys = main([target], [prediction]).keys()
  if "precision" in keys and "recall" in keys:
    return _token_accuracy
  key = next((k for k in ("f1", "accuracy", "map@20") if k in keys), next(iter(keys)))
  return lambda t, p: float(main([t], [p])[key])


def metric_fns_of(task: seqio.Task) -> list:
  """The task's metric_fns; a task without any (a user's) is scored by exact-match accuracy,
  the metric a text-to-text or multiple-choice prediction implies, with a warning."""
  if task.metric_fns:
    return list(task.metric_fns)
  if task.name not in _WARNED_IMPLIED_METRIC:
    _WARNED_IMPLIED_METRIC.add(task.name)
    logging.warning("task %s has no metric_fns: scoring it by exact-match accuracy (give the "
                    "task metric_fns to choose its metric)", task.name)
  return [metrics_lib.accuracy]


_WARNED_IMPLIED_METRIC = set()


def seqio_task_metrics(task: seqio.Task, records: List[dict]) -> Dict[str, float]:
  """The task's metric_fns over the records' targets and predictions (labelled records)."""
  if not records:
    return {}
  targets = [r["target"] for r in records]
  predictions = [r["prediction"] for r in records]
  scores: Dict[str, float] = {}
  for fn in metric_fns_of(task):
    scores.update({k: float(v) for k, v in fn(targets, predictions).items()})
  return scores


def metrics_of_seqio_task(task: EvalTask, records: List[dict]) -> Dict[str, float]:
  """`Way.metrics` of the ways scored by the seqio task's own metric_fns."""
  return seqio_task_metrics(seqio.get_mixture_or_task(task.name), records)


def input_was_truncated(feature: seqio.Feature, text_: str, length: int) -> bool:
  """Whether `text_`, tokenized as the task does (with its EOS), is longer than `length`
  tokens: seqio's `append_eos_after_trim` then cut it, and the model saw only its start (a QA
  context's answer past the cut cannot be found)."""
  count = len(feature.vocabulary.encode(text_)) + (1 if feature.add_eos else 0)
  return count > length


def truncation_counts(records: List[dict]) -> Optional[Dict[str, int]]:
  """How many of a task's records had their input cut (`input_truncated`) or their output
  stopped by the decode length (`decode_limit_reached`), out of how many; None when none."""
  counts = {"examples": len(records),
            "inputs_truncated": sum(bool(r.get("input_truncated")) for r in records),
            "decode_limit_reached": sum(bool(r.get("decode_limit_reached")) for r in records)}
  return counts if counts["inputs_truncated"] or counts["decode_limit_reached"] else None


def load_examples(seqio_task: seqio.Task, split: str, settings: EvalSettings) -> List[dict]:
  lengths = settings.task_feature_lengths
  ds = seqio_task.get_dataset(sequence_length={"inputs": lengths["inputs"],
                                               "targets": lengths["targets"]},
                              split=split, shuffle=False, num_epochs=1)
  if settings.max_examples:
    ds = ds.take(settings.max_examples)
  return list(ds.as_numpy_iterator())


# (context, task, seqio task, examples, padded inputs, no_gold) -> (raw outputs, record extras)
Predictor = Callable[[Context, EvalTask, seqio.Task, List[dict], np.ndarray, Optional[str]],
                     tuple]


def predict_seqio_task(context: Context, task: EvalTask, split: str, predictor: Predictor):
  """(provenance, no_gold, records) of a seqio task whose raw outputs `predictor` makes: the
  records hold the post-processed target and prediction and the example's score."""
  seqio_task = seqio.get_mixture_or_task(task.name)
  examples = load_examples(seqio_task, split, context.settings)
  provenance = gold_lib.task_provenance(seqio_task, split)
  targets = [jsonable(seqio_task.postprocess_fn(text(ex["targets_pretokenized"]),
                                                example=ex, is_target=True))
             for ex in examples]
  no_gold = check_gold(context, task, split, provenance, targets)
  inputs = inference_lib.pad_columns([ex["inputs"] for ex in examples],
                                     context.settings.task_feature_lengths["inputs"])
  outputs, extras = predictor(context, task, seqio_task, examples, inputs, no_gold)
  inputs_feature = seqio_task.output_features["inputs"]
  records = []
  for index, (ex, target, output, extra) in enumerate(zip(examples, targets, outputs, extras)):
    prediction = seqio_task.postprocess_fn(output, example=ex, is_target=False)
    input_text = text(ex["inputs_pretokenized"])
    truncated = input_was_truncated(inputs_feature, input_text,
                                    context.settings.task_feature_lengths["inputs"])
    records.append({"id": text(ex["id"]) if "id" in ex else str(index),
                    **cluster_fields(ex), "input": input_text,
                    "target": target if no_gold is None else None,
                    "prediction": jsonable(prediction), **extra,
                    **({"input_truncated": True} if truncated else {})})
  scorer = None
  if no_gold is None:
    scorer = example_scorer(metric_fns_of(seqio_task), records[0]["target"],
                            records[0]["prediction"])
  for record in records:
    record["example_score"] = (None if scorer is None else
                               scorer(record["target"], record["prediction"]))
  return provenance, no_gold, records
