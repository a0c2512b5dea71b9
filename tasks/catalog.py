"""What `xltransfer tasks list` shows: every xltransfer registration with its kind, family,
language and data location, and how each task is evaluated. Registrations add themselves
through `register_task` and `register_mixture`, which wrap seqio's registries.

How a task is evaluated (`xltransfer.evaluation` reads it here, never from the task's name):
  "generation"           decode the inputs, score with the seqio task's metric_fns;
  "rank_classification"  score every one of the example's `choices` as the target and predict
                         the most likely (multiple choice: XCOPA, SIQA, HellaSwag, ...);
  "retrieval"            embed queries and candidates with the encoder and rank by cosine
                         similarity (Tatoeba, Mewsli-X, LAReQA: `family` names the retrieval set).
The study's own registrations are named `xlt_...`; a user's task may take any name, through
`register_task` (listed here) or directly with seqio (evaluated by generation with its own
metric_fns, or as `declare_evaluation` says; see xltransfer/evaluation/eval_tasks.py). A task
without metric_fns is scored by exact-match accuracy (xltransfer/evaluation/examples.py);
`register_task` warns about a target task registered without them.
"""
import dataclasses
import logging
from typing import Optional

import seqio

from xltransfer.data import vocab
from xltransfer.errors import ConfigError

KINDS = ("intermediate", "target", "corpus", "translated", "mixture")
PREFIX = "xlt_"
GENERATION = "generation"
RANK_CLASSIFICATION = "rank_classification"
RETRIEVAL = "retrieval"
EVALUATIONS = (GENERATION, RANK_CLASSIFICATION, RETRIEVAL)


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  kind: str
  family: str
  language: Optional[str]
  splits: tuple
  data: str
  evaluation: Optional[str] = None  # one of EVALUATIONS; None for mixtures


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """How a task is evaluated: the way (one of EVALUATIONS), the family its outputs are filed
  under (predictions/{family}/{language}.jsonl; None: the task name) and its language (None:
  the evaluator's default)."""
  evaluation: str
  family: Optional[str] = None
  language: Optional[str] = None


ENTRIES = {}
# Declared by `declare_evaluation` for tasks registered outside the catalogue.
DECLARED = {}


def output_features(add_eos=True):
  """inputs/targets with the deferred task vocabulary (see xltransfer.data.vocab)."""
  return {
      "inputs": seqio.Feature(vocab.task_vocabulary(), add_eos=add_eos, required=False),
      "targets": seqio.Feature(vocab.task_vocabulary(), add_eos=add_eos),
  }


def standard_tail():
  """Tokenize (keeping the *_pretokenized text) and append EOS after trimming."""
  return [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]


def _check_evaluation(name, evaluation):
  if evaluation not in EVALUATIONS:
    raise ConfigError(f"task {name!r}: unknown evaluation {evaluation!r}; valid: "
                      f"{', '.join(EVALUATIONS)}")


def register_task(name, *, kind, family, language, data, source, preprocessors,
                  metric_fns=(), postprocess_fn=None, splits=None, evaluation=GENERATION):
  """Registers a seqio Task (replacing an earlier one of the same name) and catalogs it with
  how it is evaluated (one of EVALUATIONS)."""
  if kind not in KINDS or kind == "mixture":
    raise ConfigError(f"register_task {name!r}: unknown kind {kind!r}; valid: "
                      f"{', '.join(k for k in KINDS if k != 'mixture')}")
  _check_evaluation(name, evaluation)
  if kind == "target" and not metric_fns and evaluation != RETRIEVAL:
    logging.warning(
        "register_task %r: a target task without metric_fns; `xltransfer eval` scores it by "
        "exact-match accuracy. Pass metric_fns (xltransfer.tasks.metrics has the XTREME-R "
        "ones) to choose its metric", name)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(), preprocessors=preprocessors,
      postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))
  ENTRIES[name] = Entry(name, kind, family, language, tuple(splits or source.splits), data,
                        evaluation)


def register_mixture(name, tasks, *, family, default_rate=None, data="(its tasks)"):
  """Registers a seqio Mixture of (task, rate) pairs or task names with a default rate."""
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)
  ENTRIES[name] = Entry(name, "mixture", family, None, (), data)


def declare_evaluation(name, *, evaluation=GENERATION, family=None, language=None):
  """Says how a task registered outside the catalogue (seqio.TaskRegistry.add, any name) is
  evaluated, and under which family and language its outputs are filed. Without it such a task
  is evaluated by generation, filed under its own name (see xltransfer.evaluation.eval_tasks).
  A retrieval task needs the `family` of one of the project's retrieval sets."""
  _check_evaluation(name, evaluation)
  if name in ENTRIES:
    raise ConfigError(f"declare_evaluation {name!r}: a catalogued task declares its evaluation "
                      "when it is registered (register_task's `evaluation`)")
  DECLARED[name] = Evaluation(evaluation, family, language)


def evaluation_of(name) -> Optional[Evaluation]:
  """How task `name` is evaluated as the catalogue or `declare_evaluation` says; None when
  neither says anything (a mixture, or an undeclared task of the user's)."""
  entry = ENTRIES.get(name)
  if entry is not None and entry.evaluation is not None:
    return Evaluation(entry.evaluation, entry.family, entry.language)
  return DECLARED.get(name)


def entries(kind=None):
  return [e for e in ENTRIES.values() if kind is None or e.kind == kind]
