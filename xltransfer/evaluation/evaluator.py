"""Zero-shot evaluation of a model on eval tasks, one task per (target, language).

Each seqio task named (`xlt_{target}_eval_{lang}`, a user's own task, or the eval tasks of a
mixture such as `xlt_xnli_zeroshot`; the mixtures' `_train` tasks are skipped) is evaluated the
way the task catalogue declares (`xltransfer.tasks.catalog`; resolved in `eval_tasks`), each way
in its own module:
  - "generation" (`generation`): decodes the inputs (greedy, or beam search with
    `beam_size` > 1), post-processes with the task's `postprocess_fn` and scores with its
    `metric_fns`; the way of any seqio task that declares nothing, so a user's task with
    metric_fns is scored by them;
  - "rank_classification" (`rank_classification`; XCOPA and the other multiple-choice tasks):
    every one of the example's `choices` scored as the target, the most likely one predicted,
    scored by the task's `metric_fns`;
  - "retrieval" (`retrieval_eval`; Tatoeba, Mewsli-X, LAReQA): embeds queries and candidates
    with the mean-pooled encoder and ranks candidates by cosine similarity (Tatoeba both
    ways), scored by accuracy or mAP@20.
The catalogue also gives the target (family) and language the outputs are filed under; a task
that declares none is filed under its own name with language "all"
(predictions/{task name}/all.jsonl). The files (`outputs`), in the output directory:

  eval_identity.json                  the checkpoint and step these outputs belong to
  predictions/{target}/{lang}.jsonl   id, input, target, prediction, example_score (+ extras)
  predictions/{target}/{lang}.meta.json  what that file was made from: task, checkpoint, step,
                                      split, prediction settings, data source/dirs and
                                      vocabulary, provenance, no_gold
  metrics.json                        {"checkpoint", "step", "tasks": {target: {lang: {...}}},
                                       "no_gold": {target: {lang: why}},
                                       "failed": {target: {lang: error}},
                                       "truncated": {target: {lang: counts}}}
  eval_info.json                      per task the split and provenance it was read from, the
                                      settings, and the no_gold and failed tasks
  tensorboard/                        the metrics as scalars at `step`
  DONE                                written last, only when no task failed

Records hold the post-processed target and prediction (text; every gold answer for QA; one
tag per token for tagging; gold ids and the top-20 ranked ids for Mewsli-X and LAReQA; sentence
indices for Tatoeba). Extras: `prediction_index` and `label` (rank classification),
`prediction_en_to_xx` (Tatoeba's other direction, scored as `accuracy_en_to_xx`).

Lengths. Inputs longer than `task_feature_lengths["inputs"]` tokens are cut (seqio's
`append_eos_after_trim`) and generation stops at the decode length; both change what is scored
(a QA answer past the cut cannot be found; a long sentence's tags are cut short). Such records
say so (`input_truncated`, `decode_limit_reached`: true, left out otherwise), metrics.json and
eval_info.json count them per task under `truncated` ({"examples", "inputs_truncated",
"decode_limit_reached"}, tasks with any only), and a WARNING names the task. Retrieval counts
its queries (not its candidates, a pool the languages share).

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

Modules: `settings` (EvalSettings), `eval_tasks` (which tasks, how each is evaluated),
`examples` (gold, records, seqio examples and metrics), `generation`, `rank_classification`,
`retrieval_eval`, `outputs` (files and output-directory identity); this module runs them.

`evaluate_params` is the in-memory entry point (the trainer's periodic evaluation);
`evaluate_checkpoint` loads a checkpoint first (gin-configurable, used by `xltransfer eval`).

`xltransfer eval` imports this module to register its configurables before parsing the
config, so seqio, TensorFlow and the task catalogue (seconds to import) are imported by the
functions that use them: a config error is reported without waiting for them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Dict, Optional, Sequence, Union

import functools
from typing import TYPE_CHECKING

import gin
import jax
import tqdm

from xltransfer import partitioning
from xltransfer import run_lock
from xltransfer.checkpoints import loading
from xltransfer.data import gold as gold_lib
from xltransfer.data import paths
from xltransfer.errors import CheckpointError, ConfigError, UserError
from xltransfer.evaluation import inference as inference_lib
from xltransfer.evaluation.settings import EvalSettings

if TYPE_CHECKING:
  from xltransfer.evaluation.eval_tasks import EvalTask
  from xltransfer.evaluation.examples import Context, Way

# pylint: disable=import-outside-toplevel
# (seqio, tensorflow, the task catalogue and the modules that import them: see the docstring)


@functools.lru_cache(maxsize=None)
def ways() -> Dict[str, Way]:
  """How each declared way of evaluating (catalog.EVALUATIONS) predicts and scores."""
  from xltransfer.evaluation import generation, rank_classification, retrieval_eval
  from xltransfer.tasks import catalog
  return {
      catalog.GENERATION: generation.WAY,
      catalog.RANK_CLASSIFICATION: rank_classification.WAY,
      catalog.RETRIEVAL: retrieval_eval.WAY,
  }

# The fields a predictions file's records carry; recorded in its .meta.json so that a file
# written before a field existed is recomputed rather than reused without it.
# 2: "item" / "paragraph" (cluster ids for the study's bootstrap).
# 3: "input_truncated" / "decode_limit_reached" (an older file cannot say which were cut).
RECORD_FORMAT = 3


def _data_inputs(task: EvalTask) -> dict:
  """Where the task's data comes from, known without reading it: a predictions file made from
  another source (e.g. the download, before `target_source` 'original'), data dir or
  vocabulary is not reused."""
  from xltransfer.data import vocab
  return {"source": paths.target_source(task.target), "xtreme_data_dir": paths.xtreme_data_dir(),
          "original_data_dir": paths.original_data_dir(), "user_data_dir": paths.user_data_dir(),
          "vocabulary": vocab.task_vocabulary_spec()}


# ---- the evaluator ----

@dataclasses.dataclass
class TaskResult:
  """One task's outcome: its split, provenance, why it has no gold (None: it has), metrics,
  and how many inputs and outputs were cut at the lengths (None: none were)."""
  split: str
  provenance: Optional[gold_lib.Provenance]
  no_gold: Optional[str]
  metrics: Dict[str, float]
  truncated: Optional[Dict[str, int]] = None


@dataclasses.dataclass
class EvalOutcome:
  """What `Evaluator.run` found: {target: {lang: ...}} maps of metrics, no-gold reasons, task
  failures (error messages), splits, provenance (JSON, None when the source does not say) and
  truncation counts (`examples.truncation_counts`, tasks with any cut only)."""
  metrics: Dict[str, Dict[str, dict]] = dataclasses.field(default_factory=dict)
  no_gold: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
  failed: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
  splits: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
  provenance: Dict[str, Dict[str, Optional[dict]]] = dataclasses.field(default_factory=dict)
  truncated: Dict[str, Dict[str, Dict[str, int]]] = dataclasses.field(default_factory=dict)

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
    import tensorflow as tf
    from xltransfer.evaluation import outputs
    from xltransfer.evaluation.examples import Context
    from xltransfer.evaluation.outputs import (DONE_FILE, IDENTITY_FILE, INFO_FILE,
                                               METRICS_FILE, DiskFullError, check_output_dir,
                                               predictions_path, replace_other_outputs)
    self._identity = check_output_dir(self.output_dir, checkpoint, step,
                                      self.settings.no_overwrite)
    replace_other_outputs(self.output_dir, self._identity)
    done = os.path.join(self.output_dir, DONE_FILE)
    if jax.process_index() == 0 and tf.io.gfile.exists(done):
      tf.io.gfile.remove(done)  # Rewritten once this run's task list is complete.
    outputs.write_atomic(os.path.join(self.output_dir, IDENTITY_FILE),
                         json.dumps(self._identity, indent=2))
    runner = inference_lib.Inference(self.model, params, self.settings.batch_size,
                                     partitioner=self.partitioner,
                                     show_progress=self.show_progress)
    context = Context(runner, self.settings)
    outcome = EvalOutcome()
    bar = tqdm.tqdm(self.tasks, desc="eval tasks", unit="task", disable=not self.show_progress)
    for task in bar:
      bar.set_postfix_str(task.name)
      try:
        result = self._evaluate_task(context, task)
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
      if result.truncated is not None:
        _put(outcome.truncated, task, result.truncated)
        self._warn_truncated(task, result.truncated)
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
               "no_gold": outcome.no_gold, "failed": outcome.failed,
               "truncated": outcome.truncated}
    outputs.write_atomic(os.path.join(self.output_dir, METRICS_FILE),
                         json.dumps(summary, indent=2))
    info = {"checkpoint": checkpoint, "step": int(step), "splits": outcome.splits,
            "provenance": outcome.provenance,
            "tasks": {t.name: [t.target, t.lang] for t in self.tasks},
            "no_gold": outcome.no_gold, "failed": outcome.failed,
            "truncated": outcome.truncated, "settings": dataclasses.asdict(self.settings)}
    outputs.write_atomic(os.path.join(self.output_dir, INFO_FILE), json.dumps(info, indent=2))
    self._write_summaries(outcome.metrics, step)
    if outcome.failed:
      logging.error("eval: %d of %d tasks failed, no %s written: %s",
                    sum(len(v) for v in outcome.failed.values()), len(self.tasks), DONE_FILE,
                    "; ".join(f"{t}/{l}" for t, by in outcome.failed.items() for l in by))
    else:
      outputs.write_atomic(done, f"step {int(step)}\n")
    return outcome

  def _warn_truncated(self, task: EvalTask, counts: Dict[str, int]):
    """A WARNING per task whose inputs or outputs were cut at the configured lengths: its
    metric is the model's under those lengths, not over the whole examples."""
    said = []
    if counts["inputs_truncated"]:
      said.append(f"{counts['inputs_truncated']} of {counts['examples']} inputs were longer than "
                  f"{self.settings.task_feature_lengths['inputs']} tokens and were cut (the "
                  "model never saw their ends)")
    if counts["decode_limit_reached"]:
      said.append(f"{counts['decode_limit_reached']} of {counts['examples']} predictions stopped "
                  f"at the decode length ({self.settings.decode_length} tokens) before EOS")
    logging.warning("eval %s: %s; raise TASK_FEATURE_LENGTHS (or max_decode_length) to score "
                    "whole examples", task.name, "; ".join(said))

  # ---- one task ----

  def _evaluate_task(self, context: Context, task: EvalTask) -> TaskResult:
    import seqio
    import tensorflow as tf
    from xltransfer.evaluation import outputs
    from xltransfer.evaluation.eval_tasks import pick_split
    from xltransfer.evaluation.outputs import (StaleOutputError, meta_path, predictions_path,
                                               read_records, write_records)
    if task.evaluation not in ways():
      raise ConfigError(f"task {task.name}: unknown evaluation {task.evaluation!r}; valid: "
                        f"{', '.join(ways())}")
    way = ways()[task.evaluation]
    split = pick_split(seqio.get_mixture_or_task(task.name), self.settings.split)
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
        outputs.remove_predictions(path)
      reuse = mismatch is None
    if reuse:
      provenance, no_gold, count = self._recorded(task, path)
      logging.info("eval %s: %s exists, not recomputed", task.name, path)
      records = read_records(path)
      if len(records) != count:
        raise StaleOutputError(f"{path} has {len(records)} records but {meta_path(path)} says "
                               f"{count}; delete both to recompute them")
    else:
      provenance, no_gold, records = way.predict(context, task, split)
      meta = {"task": task.name, **self._identity, "split": split,
              "settings": self.settings.prediction_settings(), "data": _data_inputs(task),
              "record_format": RECORD_FORMAT,
              "provenance": provenance.to_json() if provenance is not None else None,
              "no_gold": no_gold, "records": len(records)}
      # The meta first: a predictions file never exists without it.
      outputs.write_atomic(meta_path(path), json.dumps(meta, indent=2, ensure_ascii=False))
      write_records(path, records)
    from xltransfer.evaluation.examples import truncation_counts
    truncated = truncation_counts(records)
    if no_gold is not None:
      return TaskResult(split, provenance, no_gold, {}, truncated)
    return TaskResult(split, provenance, None, way.metrics(task, records), truncated)

  def _mismatch(self, task: EvalTask, split: str, path: str) -> Optional[str]:
    """None when an existing predictions file's .meta.json says it was made for this task,
    checkpoint, step, split and settings; otherwise what differs, naming the file."""
    import tensorflow as tf
    from xltransfer.evaluation import outputs
    from xltransfer.evaluation.outputs import meta_path
    meta_file = meta_path(path)
    if not tf.io.gfile.exists(meta_file):
      return f"{path} has no {os.path.basename(meta_file)} saying what it was made from"
    meta = outputs.read_json(meta_file)
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
    from xltransfer.evaluation import outputs
    from xltransfer.evaluation.examples import NoGoldError
    from xltransfer.evaluation.outputs import meta_path
    meta = outputs.read_json(meta_path(path))
    provenance = meta.get("provenance")
    provenance = gold_lib.Provenance.from_json(provenance) if provenance else None
    no_gold = meta.get("no_gold")
    if no_gold is not None and self.settings.require_gold:
      raise NoGoldError(task.name, no_gold)
    return provenance, no_gold, meta.get("records")

  def _write_summaries(self, results: Dict[str, Dict[str, dict]], step: int):
    from xltransfer.evaluation import outputs
    outputs.write_summaries(self.output_dir, results, step)


# ---- entry points ----

def evaluate_params(model, params, mixture_or_task_name: Union[str, Sequence[str]],
                    output_dir: str, step: int = 0, settings: Optional[EvalSettings] = None,
                    partitioner=None, checkpoint: str = "(in-memory parameters)",
                    show_progress: bool = True) -> Dict[str, Dict[str, dict]]:
  """Evaluates in-memory params (e.g. from the trainer's periodic evaluation)."""
  from xltransfer.evaluation.eval_tasks import resolve_tasks
  tasks = resolve_tasks(mixture_or_task_name)
  evaluator = Evaluator(model, tasks, output_dir, settings, partitioner, show_progress)
  return evaluator.evaluate(params, step=step, checkpoint=checkpoint)


def checkpoint_step(path: str) -> int:
  """The training step a checkpoint path names (`checkpoint_N`, or a run's latest); else 0."""
  import tensorflow as tf
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
  from xltransfer.data import vocab_check
  from xltransfer.evaluation.eval_tasks import resolve_tasks
  from xltransfer.evaluation.outputs import check_output_dir
  tasks = resolve_tasks(mixture_or_task_name)  # Fail on a bad name before loading anything.
  settings = settings if settings is not None else EvalSettings()
  vocab_check.check_model_vocabulary(model, tasks, read_files=True)
  if not checkpoint_path.startswith("gs://") and not os.path.exists(checkpoint_path):
    raise CheckpointError(f"{CHECKPOINT_FLAG} {checkpoint_path}: no such file or directory")
  step = checkpoint_step(checkpoint_path)
  # Before the (slow) checkpoint load.
  check_output_dir(output_dir, checkpoint_path, step, settings.no_overwrite)
  partitioner = partitioner if partitioner is not None else partitioning.create_partitioner()
  shardings = partitioner.shardings(model.param_logical_axes())
  try:
    params, kind = loading.load_initial_params(checkpoint_path, model, shardings)
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
          "no_gold": outcome.no_gold, "failed": outcome.failed, "truncated": outcome.truncated,
          "tasks": len(tasks)}


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
    from xltransfer.evaluation.eval_tasks import resolve_tasks
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
    from xltransfer.evaluation.outputs import flat_scalars
    return flat_scalars(outcome.metrics, prefix="zeroshot/")
