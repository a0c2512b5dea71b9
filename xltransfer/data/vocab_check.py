"""Start-of-run check that every task's vocabulary fits the model's embedding.

A task vocabulary with more ids than the model has embedding rows (`config.vocab_size`) makes
ids past the table, span corruption's sentinels (`vocab_size - 1 - N`) first. Nothing would
fail where it happens: `jnp.take` fills out-of-range rows with NaN, so the run would stop
later on a non-finite loss. `train`, `eval` and `plan` therefore call `check_model_vocabulary`
before any work, as T5X checks its task and model vocabularies
(`t5x.utils.verify_matching_vocabs`). A smaller vocabulary is fine: mT5's 250100 ids use 250100
of its 250112 rows.
"""
import functools
from typing import List

import gin
import seqio
import tensorflow as tf

from xltransfer.data import span_corruption, vocab
from xltransfer.errors import ConfigError

SPEC_BINDING = "xltransfer.data.vocab.task_vocabulary_spec.spec"
# mT5 rounds its embedding up to a multiple of 128 rows (250100 ids -> 250112).
ROW_MULTIPLE = 128


def task_names(*sources) -> List[str]:
  """Task and mixture names, in order, from any mix of: a name or comma-separated names, an
  object with `mixture_or_task_name` (DatasetConfig), with `tasks` (PeriodicEvaluator) or with
  `name` (EvalTask), or a list of these. None and gin.REQUIRED are skipped."""
  names = []
  for source in sources:
    if source is None or source is gin.REQUIRED:
      continue
    if isinstance(source, str):
      names += [n.strip() for n in source.split(",") if n.strip()]
    elif hasattr(source, "mixture_or_task_name"):
      names += task_names(source.mixture_or_task_name)
    elif hasattr(source, "tasks"):
      names += task_names(*source.tasks)
    elif hasattr(source, "name"):
      names += task_names(source.name)
    elif isinstance(source, (list, tuple)):
      names += task_names(*source)
  return list(dict.fromkeys(names))


def check_model_vocabulary(model, *sources, read_files: bool = False):
  """Raises ConfigError if a task of `sources` (see `task_names`; mixtures are checked task by
  task) has a vocabulary larger than the model's `config.vocab_size` embedding rows. Sentinel
  ids are a vocabulary's top ids (`vocab_size - 1 - N`), so they fit exactly when it does.

  With `read_files` (a run that will tokenize: `train`, `eval`), each SentencePiece model file
  is read now too. Unread, an unreadable one (the released mT5 vocabulary offline) fails inside
  a tf.data map, where TensorFlow buries the one-line error in its autograph trace. `plan`
  leaves it: sizing needs no file, and planning offline is normal.

  Names that are not registered are left to the callers' own registration checks
  (`xltransfer plan` compiles with a placeholder task name when none is set).
  """
  rows = model.config.vocab_size
  registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  seen = set()
  for name in task_names(*sources):
    if name not in registered:
      continue
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
      if task.name not in seen:
        seen.add(task.name)
        _check_task(task, name, rows)
        if read_files:
          _read_vocabulary_files(task)


def check_gin_train_datasets(model):
  """`check_model_vocabulary` for the datasets gin binds to `xltransfer.train.train`, once a
  training config is parsed (what `xltransfer plan` compiles a run of)."""
  bound = gin.get_bindings("xltransfer.train.train")
  check_model_vocabulary(model, bound.get("train_dataset"), bound.get("eval_dataset"))


def _check_task(task: seqio.Task, requested: str, rows: int):
  for feature_name, feature in task.output_features.items():
    size = _reading(task, feature_name, lambda v=feature.vocabulary: vocab.vocabulary_size(v))
    if size <= rows:
      continue
    where = task.name if task.name == requested else f"{task.name} (in mixture {requested})"
    sentinels = (f"; its span-corruption sentinels <extra_id_{vocab.EXTRA_IDS - 1}>.."
                 f"<extra_id_0> are ids {size - vocab.EXTRA_IDS}..{size - 1}"
                 if _uses_span_corruption(task) else "")
    fitting_rows = -(-size // ROW_MULTIPLE) * ROW_MULTIPLE
    raise ConfigError(
        f"task {where}: its {feature_name!r} vocabulary ({_describe(feature.vocabulary)}) has "
        f"{size} ids, but the model has {rows} embedding rows (config.vocab_size){sentinels}, "
        f"so ids {rows}..{size - 1} would fall outside the embedding. Set the gin binding "
        f"{SPEC_BINDING} to a vocabulary of at most {rows} ids, or the model's vocab_size to at "
        f"least {size} (xltransfer.model.mt5_config.overrides = "
        f"{{'vocab_size': {fitting_rows}}}).")


def _read_vocabulary_files(task: seqio.Task):
  for feature_name, feature in task.output_features.items():
    vocabulary = feature.vocabulary
    if isinstance(vocabulary, vocab.DeferredVocabulary):
      vocabulary = vocabulary.resolved
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
      _reading(task, feature_name, lambda v=vocabulary: v.sp_model)  # Reads and caches the file.


def _reading(task: seqio.Task, feature_name: str, read):
  """`read()`, with a SentencePiece file that cannot be read as a ConfigError naming the task
  and the file (the released vocabulary raises its own, saying how to run offline)."""
  try:
    return read()
  except (tf.errors.OpError, OSError) as e:
    vocabulary = task.output_features[feature_name].vocabulary
    if isinstance(vocabulary, vocab.DeferredVocabulary):
      vocabulary = vocabulary.resolved
    path = getattr(vocabulary, "sentencepiece_model_file", type(vocabulary).__name__)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(f"task {task.name}: cannot read its {feature_name!r} vocabulary {path} "
                      f"({reason})") from None


def _uses_span_corruption(task: seqio.Task) -> bool:
  def unwrap(fn):
    return unwrap(fn.func) if isinstance(fn, functools.partial) else fn
  return any(unwrap(p) is span_corruption.span_corruption for p in task.preprocessors)


def _describe(vocabulary) -> str:
  if isinstance(vocabulary, vocab.DeferredVocabulary):
    inner = _describe(vocabulary.resolved)
    return f"the task vocabulary {vocabulary.spec!r}: {inner}"
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return (f"SentencePiece {vocabulary.sentencepiece_model_file} with "
            f"{vocabulary.extra_ids} extra ids")
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return f"bytes with {vocabulary.extra_ids} extra ids"
  return type(vocabulary).__name__
