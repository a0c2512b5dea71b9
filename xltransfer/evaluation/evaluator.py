"""Zero-shot evaluation of a model on XTREME-R eval tasks, one task per (target, language).

For each seqio eval task (`xlt_{target}_eval_{lang}`, or the eval tasks of a mixture such as
`xlt_xnli_zeroshot`; the mixtures' `_train` tasks are skipped) the evaluator:
  - generation tasks: decodes the inputs (greedy, or beam search with `beam_size` > 1);
  - multiple-choice tasks (examples carry `choices`): rank classification, every choice
    scored as the target, the most likely one predicted;
  - retrieval targets (tatoeba, mewslix, lareqa): embeds queries and candidates with the
    mean-pooled encoder and ranks candidates by cosine similarity (Tatoeba both ways);
then post-processes with the task's `postprocess_fn`, scores with its `metric_fns` (the
official metrics of `xltransfer.evaluation.metrics`) and writes, into the output directory:

  eval_identity.json                  the checkpoint and step these outputs belong to
  predictions/{target}/{lang}.jsonl   id, input, target, prediction, example_score (+ extras)
  predictions/{target}/{lang}.meta.json  what that file was made from: task, checkpoint, step,
                                      split, prediction settings, data source/dirs and
                                      vocabulary, provenance, no_gold
  metrics.json                        {"checkpoint", "step", "tasks": {target: {lang: {...}}},
                                       "no_gold": {target: {lang: why}},
                                       "failed": {target: {lang: error}}}
  eval_info.json                      per task the split and provenance it was read from, the
                                      settings, and the no_gold and failed tasks
  tensorboard/                        the metrics as scalars at `step`
  DONE                                written last, only when no task failed

Records hold the post-processed target and prediction (text; every gold answer for QA; one
tag per token for tagging; gold ids and the top-20 ranked ids for Mewsli-X and LAReQA; sentence
indices for Tatoeba). Extras: `prediction_index` and `label` (rank classification),
`prediction_en_to_xx` (Tatoeba's other direction, scored as `accuracy_en_to_xx`).

Gold. XTREME-R's official download hides the test gold (xltransfer/data/gold.py), so a task is
scored only when its examples carry gold, decided before any inference:
  - the data source reports a `Provenance` (`gold.task_provenance`, or a retrieval set's
    `provenance`): the task has gold exactly when `provenance.labelled`;
  - a source without provenance (a user's own task): the task has no gold when every example's
    target is empty (an empty string, or an empty gold set for retrieval).
A task without gold gets predictions only: its records have `target`, `label` and
`example_score` null, metrics.json has no number for it but a `no_gold` entry saying why (the
reason names the data file), and the CLI prints it. With `EvalSettings.require_gold` (what
`xltransfer study` sets) such a task fails instead, before inference, with that reason. A
split whose examples are only partly labelled, or that a provenance calls labelled while some
targets are empty, fails the task (DataFormatError): a metric over part of a split is not
that split's metric. So does a split without examples.

Failures. A task that raises a `UserError` (missing file, bad data, no gold under
require_gold) is recorded under `failed` in metrics.json and eval_info.json and the other tasks
still run; DONE is then not written (a rerun resumes, redoing only the failed tasks) and
`xltransfer eval` exits 1 after listing them. Any other exception is a bug and propagates.

Resumption. A task whose predictions file exists is complete (files appear by atomic rename,
after their .meta.json): a rerun reads it back instead of recomputing it, and metrics are always
computed from the files, so they equal what anyone computes from them. Outputs are tied to one
checkpoint and step (eval_identity.json, and each predictions file's .meta.json).

Another checkpoint. Evaluating another checkpoint or step into a directory that holds an
evaluation (or predictions without eval_identity.json) recomputes it: DONE, metrics.json,
eval_info.json and tensorboard/ are removed, eval_identity.json is rewritten, then every
predictions file whose .meta.json names another checkpoint, step, task, split, prediction
settings, data source or directory or vocabulary is removed (predictions before their .meta.json) and recomputed; a log line names
what is replaced. A crash midway leaves only files whose .meta.json says what made them,
which the next run checks again, so predictions are never described as another checkpoint's.
With `EvalSettings.no_overwrite` (`xltransfer eval --no_overwrite`) such a directory is
refused instead (StaleOutputError) before the checkpoint is loaded, and a predictions file
made with another split or other prediction settings fails its task.

Disk full. A write that finds no space left (ENOSPC) raises DiskFullError naming the file and
its size and stops the evaluation; the tasks finished before it keep their files (every file
appears by atomic rename), so a rerun after freeing space resumes. Only process 0 writes; the
output directory must be visible to every host (a shared or gs:// path) for resumption to skip
the same tasks on all.

`evaluate_params` is the in-memory entry point (the trainer's periodic evaluation);
`evaluate_checkpoint` loads a checkpoint first (gin-configurable, used by `xltransfer eval`).
"""
import dataclasses
import difflib
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Union

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from xltransfer import disk_full
from xltransfer import partitioning
from xltransfer import run_lock
from xltransfer.data import gold as gold_lib
from xltransfer.data import paths
from xltransfer.data import retrieval as retrieval_data
from xltransfer.data import vocab
from xltransfer.data import vocab_check
from xltransfer.errors import CheckpointError, ConfigError, DataFormatError, UserError
from xltransfer.evaluation import inference as inference_lib
from xltransfer.evaluation import metrics as metrics_lib
from xltransfer.evaluation import retrieval
# Imported here, not when first used: they register gin configurables, which gin refuses
# once the config is parsed; importing xltransfer.tasks registers the xlt_ tasks.
import xltransfer.tasks  # pylint: disable=unused-import
from xltransfer.tasks import catalog
from xltransfer.train import checkpointing

PREDICTIONS_DIR = "predictions"
METRICS_FILE = "metrics.json"
INFO_FILE = "eval_info.json"
DONE_FILE = "DONE"
IDENTITY_FILE = "eval_identity.json"
META_SUFFIX = ".meta.json"
TENSORBOARD_DIR = "tensorboard"
RETRIEVAL_TARGETS = ("tatoeba", "mewslix", "lareqa")
MAP_K = 20
_EVAL_TASK_NAME = re.compile(r"^xlt_(?P<target>[a-z0-9]+)_eval_(?P<lang>[a-z]+)$")


@gin.configurable(module="xltransfer.evaluation")
@dataclasses.dataclass
class EvalSettings:
  """How to evaluate (gin: `xltransfer.evaluation.EvalSettings.<field>`).

  split: the split to read; a task without it falls back to `validation`, then its first split
    (TyDiQA-GoldP has only dev, XQuAD only test). The split used is in eval_info.json.
  task_feature_lengths: inputs are cut to `inputs` tokens; `targets` is the decode length
    unless `max_decode_length` is set, and the length of rank-classification choices.
  batch_size: global rows per device step (fixed; the last batch is padded).
  beam_size, alpha: beam search (length penalty alpha) when beam_size > 1, else greedy.
  retrieval_layer: encoder layer for retrieval embeddings (0-based); None: the final output.
  candidate_chunk: candidates per device step of the nearest-neighbour search.
  max_examples: evaluate only the first N examples of each task (smoke tests).
  require_gold: a task without gold fails (before inference) instead of getting predictions
    only; `xltransfer study` sets it, so that a study never lacks a number silently.
  no_overwrite: refuse an output directory holding another checkpoint's, step's or settings'
    outputs instead of recomputing them (`xltransfer eval --no_overwrite`).
  """
  split: str = "test"
  task_feature_lengths: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {"inputs": 512, "targets": 128})
  batch_size: int = 32
  beam_size: int = 1
  alpha: float = 0.6
  max_decode_length: Optional[int] = None
  retrieval_layer: Optional[int] = None
  candidate_chunk: int = 65536
  max_examples: Optional[int] = None
  require_gold: bool = False
  no_overwrite: bool = False

  def __post_init__(self):
    missing = {"inputs", "targets"} - set(self.task_feature_lengths)
    if missing:
      raise ConfigError(f"EvalSettings.task_feature_lengths needs {sorted(missing)} "
                        f"(got {self.task_feature_lengths})")

  @property
  def decode_length(self) -> int:
    return self.max_decode_length or self.task_feature_lengths["targets"]

  def prediction_settings(self) -> dict:
    """The settings that change predictions (as JSON): a predictions file made with other
    values is not reused. Batch size and candidate chunking change only the speed."""
    return json.loads(json.dumps({
        "task_feature_lengths": dict(self.task_feature_lengths), "beam_size": self.beam_size,
        "alpha": self.alpha if self.beam_size > 1 else None,
        "decode_length": self.decode_length, "retrieval_layer": self.retrieval_layer,
        "max_examples": self.max_examples}))


class NoGoldError(UserError):
  """A task has no gold and `EvalSettings.require_gold` is set; `reason` says why."""

  def __init__(self, task_name: str, reason: str):
    self.reason = reason
    super().__init__(f"{task_name}: no gold to score, so no metric (require_gold): {reason}")


class StaleOutputError(UserError):
  """The output directory holds outputs of another checkpoint, step, split or settings, and
  `EvalSettings.no_overwrite` forbids replacing them."""


# No space left on the device while writing an output file; the message names it.
DiskFullError = disk_full.DiskFullError


@dataclasses.dataclass(frozen=True)
class EvalTask:
  name: str    # the seqio task
  target: str  # XTREME-R task key (xnli, ...) or, for other tasks, the task name
  lang: str


# ---- which tasks ----

def _split_names(mixture_or_task_names: Union[str, Sequence[str]]) -> List[str]:
  if isinstance(mixture_or_task_names, str):
    mixture_or_task_names = mixture_or_task_names.split(",")
  return [n.strip() for n in mixture_or_task_names if n.strip()]


def _target_and_language(task_name: str):
  entry = catalog.ENTRIES.get(task_name)
  if entry is not None and entry.language:
    return entry.family, entry.language
  match = _EVAL_TASK_NAME.match(task_name)
  if match:
    return match.group("target"), match.group("lang")
  return task_name, "all"


def resolve_tasks(mixture_or_task_names: Union[str, Sequence[str]]) -> List[EvalTask]:
  """Eval tasks of the given task and mixture names (comma-separated or a list).

  Mixtures contribute their tasks except the `_train` ones. Unknown names raise ConfigError.
  """
  names = _split_names(mixture_or_task_names)
  if not names:
    raise ConfigError("no task or mixture to evaluate (MIXTURE_OR_TASK_NAME is empty)")
  task_names: List[str] = []
  for name in names:
    if name in seqio.MixtureRegistry.names():
      task_names += [t.name for t in seqio.get_mixture_or_task(name).tasks
                     if not t.name.endswith("_train")]
    elif name in seqio.TaskRegistry.names():
      task_names.append(name)
    else:
      known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
      close = difflib.get_close_matches(name, known, n=5)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"unknown task or mixture {name!r}{hint} (`xltransfer tasks list` shows "
                        "the registered ones)")
  tasks, seen = [], {}
  for name in dict.fromkeys(task_names):
    target, lang = _target_and_language(name)
    if (target, lang) in seen:
      raise ConfigError(f"tasks {seen[(target, lang)]} and {name} both write "
                        f"predictions/{target}/{lang}.jsonl; evaluate them separately")
    seen[(target, lang)] = name
    tasks.append(EvalTask(name, target, lang))
  return tasks


def _pick_split(task: seqio.Task, preferred: str) -> str:
  splits = tuple(task.splits)
  if preferred in splits:
    return preferred
  if "validation" in splits:
    return "validation"
  if not splits:
    raise ConfigError(f"task {task.name} has no splits")
  return splits[0]


# ---- per-example scores and metrics from records ----

def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Record fields that say which examples are not independent (docs/interfaces.md,
# "Evaluation outputs"): written where the example carries them, non-empty.
CLUSTER_FIELDS = ("item", "paragraph")
# The fields a predictions file's records carry; recorded in its .meta.json so that a file
# written before a field existed is recomputed rather than reused without it.
# 2: "item" / "paragraph" (cluster ids for the study's bootstrap).
RECORD_FORMAT = 2


def _cluster_fields(ex) -> dict:
  return {k: _text(ex[k]) for k in CLUSTER_FIELDS if k in ex and _text(ex[k])}


def _jsonable(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_jsonable(v) for v in value.tolist()]
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _is_unlabeled(target) -> bool:
  if isinstance(target, str):
    return target == ""
  if isinstance(target, (list, tuple)):
    return all(_is_unlabeled(t) for t in target)
  return target is None


def _token_accuracy(target, prediction) -> float:
  pairs = list(zip(target, prediction))
  return 100.0 * sum(t == p for t, p in pairs) / max(1, len(target))


def _example_scorer(metric_fns, target, prediction):
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


def seqio_task_metrics(task: seqio.Task, records: List[dict]) -> Dict[str, float]:
  """The task's metric_fns over the records' targets and predictions (labelled records)."""
  if not records:
    return {}
  targets = [r["target"] for r in records]
  predictions = [r["prediction"] for r in records]
  scores: Dict[str, float] = {}
  for fn in task.metric_fns:
    scores.update({k: float(v) for k, v in fn(targets, predictions).items()})
  return scores


def retrieval_metrics(target: str, records: List[dict]) -> Dict[str, float]:
  if not records:
    return {}
  if target == "tatoeba":
    gold = [r["target"] for r in records]
    scores = metrics_lib.accuracy(gold, [r["prediction"] for r in records])
    scores["accuracy_en_to_xx"] = metrics_lib.accuracy(
        gold, [r["prediction_en_to_xx"] for r in records])["accuracy"]
    return scores
  return metrics_lib.map_at_k([r["target"] for r in records],
                              [r["prediction"] for r in records], k=MAP_K)


def _data_inputs(task: "EvalTask") -> dict:
  """Where the task's data comes from, known without reading it: a predictions file made from
  another source (e.g. the download, before `target_source` 'original'), data dir or
  vocabulary is not reused."""
  return {"source": paths.target_source(task.target), "xtreme_data_dir": paths.xtreme_data_dir(),
          "original_data_dir": paths.original_data_dir(), "user_data_dir": paths.user_data_dir(),
          "vocabulary": vocab.task_vocabulary_spec()}


def gold_status(provenance: Optional[gold_lib.Provenance], targets: Sequence,
                where: str) -> Optional[str]:
  """None when a split's examples carry gold; otherwise why not (see the module docstring).

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


# ---- files ----

def predictions_path(output_dir: str, target: str, lang: str) -> str:
  return os.path.join(output_dir, PREDICTIONS_DIR, target, f"{lang}.jsonl")


def meta_path(predictions_file: str) -> str:
  """The .meta.json next to a predictions file: what it was made from."""
  return predictions_file[:-len(".jsonl")] + META_SUFFIX


def read_records(path: str) -> List[dict]:
  with tf.io.gfile.GFile(path, "r") as f:
    return [json.loads(line) for line in f if line.strip()]


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  try:
    data = json.loads(text)
  except ValueError as e:
    raise DataFormatError(path, None, f"not JSON ({e})") from None
  if not isinstance(data, dict):
    raise DataFormatError(path, None, "not a JSON object")
  return data


def _remove(path: str):
  """Removes a file if it exists (process 0 only, as every write)."""
  if jax.process_index() == 0 and tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


def _write_atomic(path: str, text: str):
  if jax.process_index() != 0:
    return
  partial = path + ".partial"
  try:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(partial, "w") as f:
      f.write(text)
    tf.io.gfile.rename(partial, path, overwrite=True)
  except (OSError, tf.errors.OpError) as e:
    if not disk_full.is_disk_full(e):
      raise
    try:  # Leave no half-written file behind; the previous version of `path` is untouched.
      _remove(partial)
    except (OSError, tf.errors.OpError):
      pass
    # The files written before this one are intact (each appeared by rename): a rerun resumes.
    raise disk_full.disk_full_error(path, len(text.encode("utf-8"))) from None


def write_records(path: str, records: List[dict]):
  _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def output_identity(checkpoint: str, step: int) -> dict:
  """What the outputs of an evaluation belong to: the checkpoint (an existing local path made
  absolute, so `ckpt` and `./ckpt/` agree) and the step."""
  if "://" not in checkpoint and os.path.exists(checkpoint):
    checkpoint = os.path.normpath(os.path.abspath(checkpoint))
  elif "://" in checkpoint:
    checkpoint = checkpoint.rstrip("/")
  return {"checkpoint": checkpoint, "step": int(step)}


def _other_outputs(output_dir: str, identity: dict) -> Optional[str]:
  """What the directory holds that is not an evaluation of `identity` (None: nothing)."""
  path = os.path.join(output_dir, IDENTITY_FILE)
  if tf.io.gfile.exists(path):
    recorded = _read_json(path)
    if (recorded.get("checkpoint"), recorded.get("step")) != (identity["checkpoint"],
                                                              identity["step"]):
      return (f"{output_dir} holds the evaluation of checkpoint {recorded.get('checkpoint')} "
              f"(step {recorded.get('step')}), not of checkpoint {identity['checkpoint']} (step "
              f"{identity['step']})")
  elif tf.io.gfile.glob(os.path.join(output_dir, PREDICTIONS_DIR, "*", "*.jsonl")):
    return (f"{output_dir} holds predictions but no {IDENTITY_FILE} saying which checkpoint "
            "and step made them (an older xltransfer or another tool wrote them)")
  return None


def check_output_dir(output_dir: str, checkpoint: str, step: int,
                     no_overwrite: bool = False) -> dict:
  """The output identity of evaluating `checkpoint` at `step` into output_dir. When the
  directory holds outputs of something else, raises StaleOutputError under `no_overwrite`;
  otherwise they will be recomputed (`replace_other_outputs`)."""
  identity = output_identity(checkpoint, step)
  other = _other_outputs(output_dir, identity)
  if other is not None and no_overwrite:
    raise StaleOutputError(
        f"{other}; refused (--no_overwrite): pass a fresh output directory (--output_dir), "
        f"delete {output_dir}, or leave out --no_overwrite to recompute them")
  return identity


def _recorded_identity(predictions_file: str) -> Optional[dict]:
  """The checkpoint and step a predictions file's .meta.json names (None: no readable meta)."""
  meta_file = meta_path(predictions_file)
  if not tf.io.gfile.exists(meta_file):
    return None
  try:
    meta = _read_json(meta_file)
  except DataFormatError:
    return None
  return {"checkpoint": meta.get("checkpoint"), "step": meta.get("step")}


def _remove_predictions(predictions_file: str):
  """Removes a predictions file, then its .meta.json: a predictions file never exists
  without the meta that says what made it."""
  _remove(predictions_file)
  _remove(meta_path(predictions_file))


def replace_other_outputs(output_dir: str, identity: dict):
  """Makes `output_dir` the evaluation of `identity`, removing what another checkpoint or step
  left there (see "Another checkpoint" in the module docstring). Order matters for a crash
  midway: first the summaries of the old evaluation, then the new eval_identity.json, then the
  old predictions, each of which names its own checkpoint and step until it is gone."""
  other = _other_outputs(output_dir, identity)
  if other is None or jax.process_index() != 0:
    return
  stale = []
  for path in sorted(tf.io.gfile.glob(os.path.join(output_dir, PREDICTIONS_DIR, "*", "*.jsonl"))):
    if _recorded_identity(path) != identity:
      stale.append(path)
  # A .meta.json without its predictions file: a crash before the file's rename.
  orphans = [meta for meta in tf.io.gfile.glob(os.path.join(output_dir, PREDICTIONS_DIR, "*",
                                                            "*" + META_SUFFIX))
             for predictions in [meta[:-len(META_SUFFIX)] + ".jsonl"]
             if not tf.io.gfile.exists(predictions)
             and _recorded_identity(predictions) != identity]
  logging.warning("eval: %s; recomputing it for checkpoint %s (step %d): replacing %d "
                  "predictions files%s and the old %s, %s and %s", other, identity["checkpoint"],
                  identity["step"], len(stale),
                  f" ({', '.join(os.path.relpath(p, output_dir) for p in stale)})" if stale
                  else "", METRICS_FILE, INFO_FILE, TENSORBOARD_DIR)
  for name in (DONE_FILE, METRICS_FILE, INFO_FILE):
    _remove(os.path.join(output_dir, name))
  tensorboard = os.path.join(output_dir, TENSORBOARD_DIR)
  if tf.io.gfile.isdir(tensorboard):
    tf.io.gfile.rmtree(tensorboard)
  _write_atomic(os.path.join(output_dir, IDENTITY_FILE), json.dumps(identity, indent=2))
  for path in stale:
    _remove_predictions(path)
  for path in orphans:
    _remove(path)


# ---- the evaluator ----

@dataclasses.dataclass
class TaskResult:
  """One task's outcome: its split, provenance, why it has no gold (None: it has) and metrics."""
  split: str
  provenance: Optional[gold_lib.Provenance]
  no_gold: Optional[str]
  metrics: Dict[str, float]


@dataclasses.dataclass
class EvalOutcome:
  """What `Evaluator.run` found: {target: {lang: ...}} maps of metrics, no-gold reasons, task
  failures (error messages), splits and provenance (JSON, None when the source does not say)."""
  metrics: Dict[str, Dict[str, dict]] = dataclasses.field(default_factory=dict)
  no_gold: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
  failed: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
  splits: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
  provenance: Dict[str, Dict[str, Optional[dict]]] = dataclasses.field(default_factory=dict)

  @property
  def ok(self) -> bool:
    return not self.failed


def _put(table: dict, task: EvalTask, value):
  table.setdefault(task.target, {})[task.lang] = value


class Evaluator:
  """Evaluates parameters on a list of eval tasks; see the module docstring.

  Args:
    model: an `EncoderDecoderModel`.
    tasks: `EvalTask`s (see `resolve_tasks`).
    output_dir: where predictions, metrics.json and DONE go.
    settings: `EvalSettings`.
    partitioner: shard batches and params over its mesh (as training does); None: one device.
    show_progress: tqdm bars over tasks and batches.
  """

  def __init__(self, model, tasks: Sequence[EvalTask], output_dir: str,
               settings: Optional[EvalSettings] = None, partitioner=None,
               show_progress: bool = True):
    self.model = model
    self.tasks = list(tasks)
    self.output_dir = output_dir
    self.settings = settings or EvalSettings()
    self.partitioner = partitioner
    self.show_progress = show_progress
    self._candidate_cache: Dict[Any, np.ndarray] = {}
    self._identity: dict = {}

  def evaluate(self, params, step: int = 0, checkpoint: str = "") -> Dict[str, Dict[str, dict]]:
    """Runs (or resumes) every task; returns {target: {lang: {metric: value}}} (see `run`)."""
    return self.run(params, step, checkpoint).metrics

  def run(self, params, step: int = 0, checkpoint: str = "") -> EvalOutcome:
    """Runs (or resumes) every task and writes the output files; a task that fails with a
    UserError is recorded in the outcome and the files, and the others still run. The output
    dir is locked meanwhile (`run_lock`, process 0): a second eval into it is refused."""
    lock = (run_lock.DirectoryLock(self.output_dir, "evaluation")
            if jax.process_index() == 0 else None)
    run_lock.acquire_for_all_processes(lock, self.output_dir)
    try:
      return self._run_locked(params, step, checkpoint)
    finally:
      if lock is not None:
        lock.release()

  def _run_locked(self, params, step: int, checkpoint: str) -> EvalOutcome:
    self._identity = check_output_dir(self.output_dir, checkpoint, step,
                                      self.settings.no_overwrite)
    replace_other_outputs(self.output_dir, self._identity)
    done = os.path.join(self.output_dir, DONE_FILE)
    if jax.process_index() == 0 and tf.io.gfile.exists(done):
      tf.io.gfile.remove(done)  # Rewritten once this run's task list is complete.
    _write_atomic(os.path.join(self.output_dir, IDENTITY_FILE),
                  json.dumps(self._identity, indent=2))
    runner = inference_lib.Inference(self.model, params, self.settings.batch_size,
                                     partitioner=self.partitioner,
                                     show_progress=self.show_progress)
    outcome = EvalOutcome()
    bar = tqdm.tqdm(self.tasks, desc="eval tasks", unit="task", disable=not self.show_progress)
    for task in bar:
      bar.set_postfix_str(task.name)
      try:
        result = self._evaluate_task(runner, task)
      except DiskFullError:
        raise  # Every later write would fail too; the finished tasks' files stay as they are.
      except UserError as error:  # The task's data or files; the other tasks can still run.
        _put(outcome.failed, task, str(error))
        logging.error("eval %s FAILED: %s", task.name, error)
        continue
      _put(outcome.splits, task, result.split)
      _put(outcome.provenance, task,
           result.provenance.to_json() if result.provenance is not None else None)
      source = result.provenance.describe() if result.provenance else f"{result.split} split"
      if result.no_gold is not None:
        _put(outcome.no_gold, task, result.no_gold)
        logging.warning("eval %s: NO GOLD, predictions only, no metric (%s): %s", task.name,
                        predictions_path(self.output_dir, task.target, task.lang),
                        result.no_gold)
      elif result.metrics:
        _put(outcome.metrics, task, result.metrics)
        logging.info("eval %s (%s, %s): %s", task.name, task.target, source,
                     " ".join(f"{k}={v:.2f}" for k, v in result.metrics.items()))
    summary = {"checkpoint": checkpoint, "step": int(step), "tasks": outcome.metrics,
               "no_gold": outcome.no_gold, "failed": outcome.failed}
    _write_atomic(os.path.join(self.output_dir, METRICS_FILE), json.dumps(summary, indent=2))
    info = {"checkpoint": checkpoint, "step": int(step), "splits": outcome.splits,
            "provenance": outcome.provenance,
            "tasks": {t.name: [t.target, t.lang] for t in self.tasks},
            "no_gold": outcome.no_gold, "failed": outcome.failed,
            "settings": dataclasses.asdict(self.settings)}
    _write_atomic(os.path.join(self.output_dir, INFO_FILE), json.dumps(info, indent=2))
    self._write_summaries(outcome.metrics, step)
    if outcome.failed:
      logging.error("eval: %d of %d tasks failed, no %s written: %s",
                    sum(len(v) for v in outcome.failed.values()), len(self.tasks), DONE_FILE,
                    "; ".join(f"{t}/{l}" for t, by in outcome.failed.items() for l in by))
    else:
      _write_atomic(done, f"step {int(step)}\n")
    return outcome

  # ---- one task ----

  def _evaluate_task(self, runner, task: EvalTask) -> TaskResult:
    seqio_task = seqio.get_mixture_or_task(task.name)
    split = _pick_split(seqio_task, self.settings.split)
    path = predictions_path(self.output_dir, task.target, task.lang)
    # Decided once from what the file says, so that every host decides alike while process 0
    # replaces it.
    reuse = False
    if tf.io.gfile.exists(path):
      mismatch = self._mismatch(task, split, path)
      if mismatch is not None and self.settings.no_overwrite:
        raise StaleOutputError(f"{mismatch}; refused (--no_overwrite): delete it (and its "
                               ".meta.json), use a fresh output directory, or leave out "
                               "--no_overwrite to recompute it")
      if mismatch is not None:
        logging.warning("eval %s: recomputing %s: %s", task.name, path, mismatch)
        _remove_predictions(path)
      reuse = mismatch is None
    if reuse:
      provenance, no_gold, count = self._recorded(task, path)
      logging.info("eval %s: %s exists, not recomputed", task.name, path)
      records = read_records(path)
      if len(records) != count:
        raise StaleOutputError(f"{path} has {len(records)} records but {meta_path(path)} says "
                               f"{count}; delete both to recompute them")
    else:
      if task.target in RETRIEVAL_TARGETS:
        provenance, no_gold, records = self._retrieval_task(runner, task, split)
      else:
        provenance, no_gold, records = self._seqio_task(runner, seqio_task, task, split)
      meta = {"task": task.name, **self._identity, "split": split,
              "settings": self.settings.prediction_settings(), "data": _data_inputs(task),
              "record_format": RECORD_FORMAT,
              "provenance": provenance.to_json() if provenance is not None else None,
              "no_gold": no_gold, "records": len(records)}
      # The meta first: a predictions file never exists without it.
      _write_atomic(meta_path(path), json.dumps(meta, indent=2, ensure_ascii=False))
      write_records(path, records)
    if no_gold is not None:
      return TaskResult(split, provenance, no_gold, {})
    if task.target in RETRIEVAL_TARGETS:
      return TaskResult(split, provenance, None, retrieval_metrics(task.target, records))
    return TaskResult(split, provenance, None, seqio_task_metrics(seqio_task, records))

  def _mismatch(self, task: EvalTask, split: str, path: str) -> Optional[str]:
    """None when an existing predictions file's .meta.json says it was made for this task,
    checkpoint, step, split and settings; otherwise what differs, naming the file."""
    meta_file = meta_path(path)
    if not tf.io.gfile.exists(meta_file):
      return f"{path} has no {os.path.basename(meta_file)} saying what it was made from"
    meta = _read_json(meta_file)
    expected = {"task": task.name, **self._identity, "split": split,
                "settings": self.settings.prediction_settings(), "data": _data_inputs(task),
                "record_format": RECORD_FORMAT}
    differ = [f"{key} {meta.get(key)!r} (this run: {value!r})" for key, value in expected.items()
              if meta.get(key) != value]
    if differ:
      return f"{path} was made with other inputs: {'; '.join(differ)}"
    return None

  def _recorded(self, task: EvalTask, path: str):
    """(provenance, no_gold, records) of a predictions file that `_mismatch` accepted."""
    meta = _read_json(meta_path(path))
    provenance = meta.get("provenance")
    provenance = gold_lib.Provenance.from_json(provenance) if provenance else None
    no_gold = meta.get("no_gold")
    if no_gold is not None and self.settings.require_gold:
      raise NoGoldError(task.name, no_gold)
    return provenance, no_gold, meta.get("records")

  def _check_gold(self, task: EvalTask, split: str, provenance, targets) -> Optional[str]:
    no_gold = gold_status(provenance, targets, f"task {task.name} ({split} split)")
    if no_gold is not None and self.settings.require_gold:
      raise NoGoldError(task.name, no_gold)
    return no_gold

  def _examples(self, seqio_task: seqio.Task, split: str) -> List[dict]:
    lengths = self.settings.task_feature_lengths
    ds = seqio_task.get_dataset(sequence_length={"inputs": lengths["inputs"],
                                                 "targets": lengths["targets"]},
                                split=split, shuffle=False, num_epochs=1)
    if self.settings.max_examples:
      ds = ds.take(self.settings.max_examples)
    return list(ds.as_numpy_iterator())

  def _seqio_task(self, runner, seqio_task: seqio.Task, task: EvalTask, split: str):
    """(provenance, no_gold, records) of a generation or rank-classification task."""
    examples = self._examples(seqio_task, split)
    provenance = gold_lib.task_provenance(seqio_task, split)
    targets = [_jsonable(seqio_task.postprocess_fn(_text(ex["targets_pretokenized"]),
                                                   example=ex, is_target=True))
               for ex in examples]
    no_gold = self._check_gold(task, split, provenance, targets)
    lengths = self.settings.task_feature_lengths
    vocabulary = seqio_task.output_features["targets"].vocabulary
    inputs = inference_lib.pad_columns([ex["inputs"] for ex in examples], lengths["inputs"])
    extras: List[dict] = [{} for _ in examples]
    if "choices" in examples[0]:
      choices = [[_text(c) for c in ex["choices"]] for ex in examples]
      best, _ = runner.rank_classify(
          inputs, [inference_lib.encode_with_eos(vocabulary, c, lengths["targets"])
                   for c in choices], description=task.name)
      outputs = [c[i] for c, i in zip(choices, best)]
      extras = [{"prediction_index": int(i),
                 "label": int(ex["label"]) if no_gold is None else None}
                for i, ex in zip(best, examples)]
    else:
      tokens = runner.decode(inputs, self.settings.decode_length, self.settings.beam_size,
                             self.settings.alpha, description=task.name)
      outputs = [vocabulary.decode([int(t) for t in row]) for row in tokens]
    records = []
    for index, (ex, target, output, extra) in enumerate(zip(examples, targets, outputs, extras)):
      prediction = seqio_task.postprocess_fn(output, example=ex, is_target=False)
      records.append({"id": _text(ex["id"]) if "id" in ex else str(index),
                      **_cluster_fields(ex), "input": _text(ex["inputs_pretokenized"]),
                      "target": target if no_gold is None else None,
                      "prediction": _jsonable(prediction), **extra})
    scorer = None
    if no_gold is None:
      scorer = _example_scorer(list(seqio_task.metric_fns), records[0]["target"],
                               records[0]["prediction"])
    for record in records:
      record["example_score"] = (None if scorer is None else
                                 scorer(record["target"], record["prediction"]))
    return provenance, no_gold, records

  def _retrieval_set(self, task: EvalTask, split: str):
    if task.target == "tatoeba":
      return retrieval_data.load_tatoeba(None, task.lang)
    if task.target == "mewslix":
      return retrieval_data.load_mewslix(None, task.lang, {"validation": "dev"}.get(split, split))
    return retrieval_data.load_lareqa(None, task.lang)

  def _embed_texts(self, runner, texts: Sequence[str], vocabulary, description: str):
    tokens = inference_lib.encode_with_eos(vocabulary, texts,
                                           self.settings.task_feature_lengths["inputs"])
    return retrieval.embed(runner, tokens, self.settings.retrieval_layer, description)

  def _retrieval_task(self, runner, task: EvalTask, split: str):
    """(provenance, no_gold, records) of a retrieval target."""
    rs = self._retrieval_set(task, split)
    # Retrieval sets that know their source carry it (xltransfer/data/retrieval.py).
    provenance = getattr(rs, "provenance", None)
    if self.settings.max_examples:
      keep = self.settings.max_examples
      rs = dataclasses.replace(rs, queries=rs.queries[:keep], query_ids=rs.query_ids[:keep],
                               gold=rs.gold[:keep])
      for field in ("query_items", "query_paragraphs"):
        if getattr(rs, field) is not None:
          rs = dataclasses.replace(rs, **{field: getattr(rs, field)[:keep]})
      if task.target == "tatoeba":  # Aligned pairs: keep both sides in step.
        rs = dataclasses.replace(rs, candidates=rs.candidates[:keep],
                                 candidate_ids=rs.candidate_ids[:keep])
    no_gold = self._check_gold(task, split, provenance, rs.gold)
    vocabulary = seqio.get_mixture_or_task(task.name).output_features["inputs"].vocabulary
    # The training tasks' prefixes: evaluation embeds what a dual encoder was trained on.
    query_prefix, candidate_prefix = retrieval_data.PREFIXES[task.target]
    queries = self._embed_texts(runner, [query_prefix + q for q in rs.queries], vocabulary,
                                f"{task.name} queries")
    # Mewsli-X and LAReQA share one candidate pool across languages: embed it once.
    key = (task.target, len(rs.candidate_ids), rs.candidate_ids[0], rs.candidate_ids[-1])
    if task.target == "tatoeba" or key not in self._candidate_cache:
      self._candidate_cache[key] = self._embed_texts(
          runner, [candidate_prefix + c for c in rs.candidates], vocabulary,
          f"{task.name} candidates")
    candidates = self._candidate_cache[key]
    search = dict(candidate_chunk=self.settings.candidate_chunk,
                  query_batch=self.settings.batch_size)
    labelled = no_gold is None
    if task.target == "tatoeba":
      forward, backward = retrieval.tatoeba_directions(queries, candidates, **search)
      return provenance, no_gold, [
          {"id": str(qid), "input": q, "target": int(min(g)) if labelled else None,
           "prediction": int(rs.candidate_ids[f]),
           "prediction_en_to_xx": int(rs.query_ids[b]),
           "example_score": 100.0 * (int(rs.candidate_ids[f]) in g) if labelled else None}
          for qid, q, g, f, b in zip(rs.query_ids, rs.queries, rs.gold, forward, backward)]
    _, indices = retrieval.cosine_top_k(queries, candidates, MAP_K, **search)
    clusters = [_cluster_fields({"item": item, "paragraph": paragraph}) for item, paragraph in
                zip(rs.query_items or [""] * len(rs.queries),
                    rs.query_paragraphs or [""] * len(rs.queries))]
    records = []
    for qid, q, g, row, cluster in zip(rs.query_ids, rs.queries, rs.gold, indices, clusters):
      ranked = [rs.candidate_ids[j] for j in row]
      score = (100.0 * metrics_lib.average_precision_at_k(g, ranked, MAP_K) if labelled
               else None)
      records.append({"id": str(qid), **cluster, "input": q,
                      "target": sorted(g) if labelled else None,
                      "prediction": ranked, "example_score": score})
    return provenance, no_gold, records

  # ---- summaries ----

  def _write_summaries(self, results: Dict[str, Dict[str, dict]], step: int):
    # simple_value events: TensorBoard and EventAccumulator.Scalars both read them.
    from xltransfer.train import scalar_summaries  # pylint: disable=import-outside-toplevel
    scalars = flat_scalars(results)
    if not scalars:
      return
    directory = os.path.join(self.output_dir, TENSORBOARD_DIR)
    try:
      writer = scalar_summaries.create_writer(directory, just_logging=jax.process_index() != 0)
      writer.write_scalars(int(step), scalars)
      writer.flush()
      writer.close()
    except (OSError, tf.errors.OpError) as e:
      if not disk_full.is_disk_full(e):
        raise
      # The predictions and metrics.json are written by now; DONE is not.
      raise disk_full.disk_full_error(directory, what="TensorBoard summaries into") from None


def flat_scalars(results: Dict[str, Dict[str, dict]], prefix: str = "") -> Dict[str, float]:
  """{target: {lang: {metric: v}}} -> {"target/lang/metric": v, "target/avg_metric": v}."""
  from xltransfer.evaluation import scores  # pylint: disable=import-outside-toplevel
  scalars = {f"{prefix}{target}/{lang}/{metric}": value
             for target, by_lang in results.items() for lang, values in by_lang.items()
             for metric, value in values.items()}
  for target, by_lang in results.items():
    if by_lang:
      try:
        scalars[f"{prefix}{target}/avg_metric"] = scores.task_summary(target,
                                                                      by_lang)["avg_metric"]
      except KeyError:  # Tasks outside XTREME-R without a main metric have no average.
        pass
  return scalars


# ---- entry points ----

def evaluate_params(model, params, mixture_or_task_name: Union[str, Sequence[str]],
                    output_dir: str, step: int = 0, settings: Optional[EvalSettings] = None,
                    partitioner=None, checkpoint: str = "(in-memory parameters)",
                    show_progress: bool = True) -> Dict[str, Dict[str, dict]]:
  """Evaluates in-memory params (e.g. from the trainer's periodic evaluation)."""
  tasks = resolve_tasks(mixture_or_task_name)
  evaluator = Evaluator(model, tasks, output_dir, settings, partitioner, show_progress)
  return evaluator.evaluate(params, step=step, checkpoint=checkpoint)


def checkpoint_step(path: str) -> int:
  """The training step a checkpoint path names (`checkpoint_N`, or a run's latest); else 0."""
  match = re.search(r"checkpoint_(\d+)/?$", path)
  if match:
    return int(match.group(1))
  steps = [int(m.group(1)) for name in (tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path)
                                        else [])
           for m in [re.match(r"checkpoint_(\d+)/?$", name)] if m]
  return max(steps) if steps else 0


# How `xltransfer eval` names the checkpoint it was given, in errors.
CHECKPOINT_FLAG = "CHECKPOINT_PATH (--checkpoint)"


@gin.configurable(module="xltransfer.evaluation")
def evaluate_checkpoint(checkpoint_path: str = gin.REQUIRED, model=gin.REQUIRED,
                        mixture_or_task_name: Union[str, Sequence[str]] = gin.REQUIRED,
                        output_dir: str = gin.REQUIRED, settings: Optional[EvalSettings] = None,
                        partitioner=None, show_progress: bool = True):
  """Loads a checkpoint (as INITIAL_CHECKPOINT_PATH accepts: a trainer run or step, an
  `xltransfer convert` output, HF or T5X) and evaluates it.

  Returns {"output_dir", "step", "metrics": {target: {lang: {metric: value}}}, "no_gold":
  {target: {lang: why}}, "failed": {target: {lang: error}}, "tasks": number of tasks}.
  """
  tasks = resolve_tasks(mixture_or_task_name)  # Fail on a bad name before loading anything.
  settings = settings if settings is not None else EvalSettings()
  vocab_check.check_model_vocabulary(model, tasks)
  if not checkpoint_path.startswith("gs://") and not os.path.exists(checkpoint_path):
    raise CheckpointError(f"{CHECKPOINT_FLAG} {checkpoint_path}: no such file or directory")
  step = checkpoint_step(checkpoint_path)
  # Before the (slow) checkpoint load.
  check_output_dir(output_dir, checkpoint_path, step, settings.no_overwrite)
  partitioner = partitioner if partitioner is not None else partitioning.create_partitioner()
  shardings = partitioner.shardings(model.param_logical_axes())
  try:
    params, kind = checkpointing.load_initial_params(checkpoint_path, model, shardings)
  except CheckpointError as e:
    # The loader is the trainer's and names the trainer's macro; here the path came from
    # --checkpoint / CHECKPOINT_PATH. Reworded in place, keeping the error's class.
    e.args = tuple(a.replace("INITIAL_CHECKPOINT_PATH", CHECKPOINT_FLAG) if isinstance(a, str)
                   else a for a in e.args)
    raise
  logging.info("evaluating %s on %d tasks into %s", kind, len(tasks), output_dir)
  evaluator = Evaluator(model, tasks, output_dir, settings, partitioner, show_progress)
  outcome = evaluator.run(params, step=step, checkpoint=checkpoint_path)
  return {"output_dir": output_dir, "step": step, "metrics": outcome.metrics,
          "no_gold": outcome.no_gold, "failed": outcome.failed, "tasks": len(tasks)}


@gin.configurable(module="xltransfer.evaluation")
class PeriodicEvaluator:
  """The trainer's `inference_evaluator`: zero-shot evaluation at every eval period.

      xltransfer.train.train.inference_evaluator = @xltransfer.evaluation.PeriodicEvaluator()
      xltransfer.evaluation.PeriodicEvaluator.mixture_or_task_name = 'xlt_xnli_zeroshot'
      xltransfer.evaluation.PeriodicEvaluator.output_dir = %MODEL_DIR

  Each call writes a complete eval directory, `{output_dir}/zeroshot/step_{step}`, and returns
  the metrics as `zeroshot/{target}/{lang}/{metric}` scalars (plus each target's avg_metric)
  for the trainer's summaries. Batches are sharded by the gin-configured partitioner, which
  describes the trainer's own mesh. A task that fails (missing data) stops the training after
  the other tasks are evaluated, as a UserError naming every failure.
  """

  def __init__(self, mixture_or_task_name: Union[str, Sequence[str]] = gin.REQUIRED,
               output_dir: str = gin.REQUIRED, settings: Optional[EvalSettings] = None,
               partitioner=None, show_progress: bool = False):
    self.tasks = resolve_tasks(mixture_or_task_name)
    self.output_dir = output_dir
    self.settings = settings
    self.partitioner = partitioner
    self.show_progress = show_progress

  def step_dir(self, step: int) -> str:
    return os.path.join(self.output_dir, "zeroshot", f"step_{int(step)}")

  def __call__(self, step: int, params, model) -> Dict[str, float]:
    if self.partitioner is None:
      self.partitioner = partitioning.create_partitioner()
    evaluator = Evaluator(model, self.tasks, self.step_dir(step), self.settings,
                          self.partitioner, self.show_progress)
    outcome = evaluator.run(params, step=step, checkpoint=f"training step {int(step)}")
    if outcome.failed:
      raise UserError(f"zero-shot evaluation at step {int(step)} into {self.step_dir(step)}: "
                      + "; ".join(f"{t}/{l}: {e}" for t, by in outcome.failed.items()
                                  for l, e in by.items()))
    return flat_scalars(outcome.metrics, prefix="zeroshot/")
