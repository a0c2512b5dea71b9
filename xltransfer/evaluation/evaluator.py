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

  predictions/{target}/{lang}.jsonl   id, input, target, prediction, example_score (+ extras)
  metrics.json                        {"checkpoint", "step", "tasks": {target: {lang: {...}}}}
  eval_info.json                      the split each task was read from and the settings
  tensorboard/                        the metrics as scalars at `step`
  DONE                                written last

Records hold the post-processed target and prediction (text; every gold answer for QA; one
tag per token for tagging; gold ids and the top-20 ranked ids for Mewsli-X and LAReQA; sentence
indices for Tatoeba). Extras: `prediction_index` and `label` (rank classification),
`prediction_en_to_xx` (Tatoeba's other direction, scored as `accuracy_en_to_xx`).
`example_score` is null for unlabeled examples (e.g. a test split without labels), and a task
without labels gets predictions but no metrics.

A task whose predictions file exists is complete (files appear by atomic rename): a rerun
reads it back instead of recomputing it, and metrics are always computed from the files, so
they equal what anyone computes from them. Only process 0 writes; the output directory must be
visible to every host (a shared or gs:// path) for resumption to skip the same tasks on all.

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

from xltransfer import partitioning
from xltransfer.data import retrieval as retrieval_data
from xltransfer.errors import CheckpointError, ConfigError
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

  def __post_init__(self):
    missing = {"inputs", "targets"} - set(self.task_feature_lengths)
    if missing:
      raise ConfigError(f"EvalSettings.task_feature_lengths needs {sorted(missing)} "
                        f"(got {self.task_feature_lengths})")

  @property
  def decode_length(self) -> int:
    return self.max_decode_length or self.task_feature_lengths["targets"]


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
  """The task's metric_fns over the records' targets and predictions ({} when unlabeled)."""
  targets = [r["target"] for r in records]
  if not records or all(_is_unlabeled(t) for t in targets):
    return {}
  predictions = [r["prediction"] for r in records]
  scores: Dict[str, float] = {}
  for fn in task.metric_fns:
    scores.update({k: float(v) for k, v in fn(targets, predictions).items()})
  return scores


def retrieval_metrics(target: str, records: List[dict]) -> Dict[str, float]:
  if target == "tatoeba":
    gold = [r["target"] for r in records]
    scores = metrics_lib.accuracy(gold, [r["prediction"] for r in records])
    scores["accuracy_en_to_xx"] = metrics_lib.accuracy(
        gold, [r["prediction_en_to_xx"] for r in records])["accuracy"]
    return scores
  return metrics_lib.map_at_k([r["target"] for r in records],
                              [r["prediction"] for r in records], k=MAP_K)


# ---- files ----

def predictions_path(output_dir: str, target: str, lang: str) -> str:
  return os.path.join(output_dir, PREDICTIONS_DIR, target, f"{lang}.jsonl")


def read_records(path: str) -> List[dict]:
  with tf.io.gfile.GFile(path, "r") as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_atomic(path: str, text: str):
  if jax.process_index() != 0:
    return
  tf.io.gfile.makedirs(os.path.dirname(path))
  partial = path + ".partial"
  with tf.io.gfile.GFile(partial, "w") as f:
    f.write(text)
  tf.io.gfile.rename(partial, path, overwrite=True)


def write_records(path: str, records: List[dict]):
  _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ---- the evaluator ----

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

  def evaluate(self, params, step: int = 0, checkpoint: str = "") -> Dict[str, Dict[str, dict]]:
    """Runs (or resumes) every task; returns {target: {lang: {metric: value}}}."""
    done = os.path.join(self.output_dir, DONE_FILE)
    if jax.process_index() == 0 and tf.io.gfile.exists(done):
      tf.io.gfile.remove(done)  # Rewritten once this run's task list is complete.
    runner = inference_lib.Inference(self.model, params, self.settings.batch_size,
                                     partitioner=self.partitioner,
                                     show_progress=self.show_progress)
    results: Dict[str, Dict[str, dict]] = {}
    splits: Dict[str, Dict[str, str]] = {}
    bar = tqdm.tqdm(self.tasks, desc="eval tasks", unit="task", disable=not self.show_progress)
    for task in bar:
      bar.set_postfix_str(task.name)
      split, scores = self._evaluate_task(runner, task)
      splits.setdefault(task.target, {})[task.lang] = split
      if scores:
        results.setdefault(task.target, {})[task.lang] = scores
        logging.info("eval %s (%s, %s split): %s", task.name, task.target, split,
                     " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
      else:
        logging.info("eval %s (%s split): unlabeled, predictions only", task.name, split)
    summary = {"checkpoint": checkpoint, "step": int(step), "tasks": results}
    _write_atomic(os.path.join(self.output_dir, METRICS_FILE), json.dumps(summary, indent=2))
    info = {"checkpoint": checkpoint, "step": int(step), "splits": splits,
            "tasks": {t.name: [t.target, t.lang] for t in self.tasks},
            "settings": dataclasses.asdict(self.settings)}
    _write_atomic(os.path.join(self.output_dir, INFO_FILE), json.dumps(info, indent=2))
    self._write_summaries(results, step)
    _write_atomic(done, f"step {int(step)}\n")
    return results

  # ---- one task ----

  def _evaluate_task(self, runner, task: EvalTask):
    seqio_task = seqio.get_mixture_or_task(task.name)
    split = _pick_split(seqio_task, self.settings.split)
    path = predictions_path(self.output_dir, task.target, task.lang)
    if tf.io.gfile.exists(path):
      logging.info("eval %s: %s exists, not recomputed", task.name, path)
      records = read_records(path)
    else:
      if task.target in RETRIEVAL_TARGETS:
        records = self._retrieval_records(runner, task, split)
      else:
        records = self._seqio_records(runner, seqio_task, task, split)
      write_records(path, records)
    if task.target in RETRIEVAL_TARGETS:
      return split, retrieval_metrics(task.target, records) if records else {}
    return split, seqio_task_metrics(seqio_task, records)

  def _examples(self, seqio_task: seqio.Task, split: str) -> List[dict]:
    lengths = self.settings.task_feature_lengths
    ds = seqio_task.get_dataset(sequence_length={"inputs": lengths["inputs"],
                                                 "targets": lengths["targets"]},
                                split=split, shuffle=False, num_epochs=1)
    if self.settings.max_examples:
      ds = ds.take(self.settings.max_examples)
    return list(ds.as_numpy_iterator())

  def _seqio_records(self, runner, seqio_task: seqio.Task, task: EvalTask, split: str):
    examples = self._examples(seqio_task, split)
    if not examples:
      return []
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
      extras = [{"prediction_index": int(i), "label": int(ex["label"])}
                for i, ex in zip(best, examples)]
    else:
      tokens = runner.decode(inputs, self.settings.decode_length, self.settings.beam_size,
                             self.settings.alpha, description=task.name)
      outputs = [vocabulary.decode([int(t) for t in row]) for row in tokens]
    records = []
    for index, (ex, output, extra) in enumerate(zip(examples, outputs, extras)):
      target = seqio_task.postprocess_fn(_text(ex["targets_pretokenized"]), example=ex,
                                         is_target=True)
      prediction = seqio_task.postprocess_fn(output, example=ex, is_target=False)
      records.append({"id": _text(ex["id"]) if "id" in ex else str(index),
                      "input": _text(ex["inputs_pretokenized"]),
                      "target": _jsonable(target), "prediction": _jsonable(prediction),
                      **extra})
    labeled = [r for r in records if not _is_unlabeled(r["target"])]
    scorer = (_example_scorer(list(seqio_task.metric_fns), labeled[0]["target"],
                              labeled[0]["prediction"]) if labeled else None)
    for record in records:
      unlabeled = scorer is None or _is_unlabeled(record["target"])
      record["example_score"] = None if unlabeled else scorer(record["target"],
                                                              record["prediction"])
    return records

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

  def _retrieval_records(self, runner, task: EvalTask, split: str) -> List[dict]:
    rs = self._retrieval_set(task, split)
    if self.settings.max_examples:
      keep = self.settings.max_examples
      rs = dataclasses.replace(rs, queries=rs.queries[:keep], query_ids=rs.query_ids[:keep],
                               gold=rs.gold[:keep])
      if task.target == "tatoeba":  # Aligned pairs: keep both sides in step.
        rs = dataclasses.replace(rs, candidates=rs.candidates[:keep],
                                 candidate_ids=rs.candidate_ids[:keep])
    if not rs.queries:
      return []
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
    if task.target == "tatoeba":
      forward, backward = retrieval.tatoeba_directions(queries, candidates, **search)
      return [{"id": str(qid), "input": q, "target": int(min(g)),
               "prediction": int(rs.candidate_ids[f]),
               "prediction_en_to_xx": int(rs.query_ids[b]),
               "example_score": 100.0 * (int(rs.candidate_ids[f]) in g)}
              for qid, q, g, f, b in zip(rs.query_ids, rs.queries, rs.gold, forward, backward)]
    _, indices = retrieval.cosine_top_k(queries, candidates, MAP_K, **search)
    records = []
    for qid, q, g, row in zip(rs.query_ids, rs.queries, rs.gold, indices):
      ranked = [rs.candidate_ids[j] for j in row]
      records.append({"id": str(qid), "input": q, "target": sorted(g), "prediction": ranked,
                      "example_score": 100.0 * metrics_lib.average_precision_at_k(g, ranked,
                                                                                  MAP_K)})
    return records

  # ---- summaries ----

  def _write_summaries(self, results: Dict[str, Dict[str, dict]], step: int):
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
    scalars = flat_scalars(results)
    if not scalars:
      return
    writer = metric_writers.create_default_writer(
        os.path.join(self.output_dir, TENSORBOARD_DIR), just_logging=jax.process_index() != 0)
    writer.write_scalars(int(step), scalars)
    writer.flush()
    writer.close()


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


@gin.configurable(module="xltransfer.evaluation")
def evaluate_checkpoint(checkpoint_path: str = gin.REQUIRED, model=gin.REQUIRED,
                        mixture_or_task_name: Union[str, Sequence[str]] = gin.REQUIRED,
                        output_dir: str = gin.REQUIRED, settings: Optional[EvalSettings] = None,
                        partitioner=None, show_progress: bool = True):
  """Loads a checkpoint (as INITIAL_CHECKPOINT_PATH accepts: a trainer run or step, an
  `xltransfer convert` output, HF or T5X) and evaluates it.

  Returns {"output_dir", "step", "metrics": {target: {lang: {metric: value}}}}.
  """
  tasks = resolve_tasks(mixture_or_task_name)  # Fail on a bad name before loading anything.
  if not checkpoint_path.startswith("gs://") and not os.path.exists(checkpoint_path):
    raise CheckpointError(f"CHECKPOINT_PATH {checkpoint_path}: no such file or directory")
  partitioner = partitioner if partitioner is not None else partitioning.create_partitioner()
  shardings = partitioner.shardings(model.param_logical_axes())
  params, kind = checkpointing.load_initial_params(checkpoint_path, model, shardings)
  logging.info("evaluating %s on %d tasks into %s", kind, len(tasks), output_dir)
  evaluator = Evaluator(model, tasks, output_dir, settings, partitioner, show_progress)
  step = checkpoint_step(checkpoint_path)
  results = evaluator.evaluate(params, step=step, checkpoint=checkpoint_path)
  return {"output_dir": output_dir, "step": step, "metrics": results}


@gin.configurable(module="xltransfer.evaluation")
class PeriodicEvaluator:
  """The trainer's `inference_evaluator`: zero-shot evaluation at every eval period.

      xltransfer.train.train.inference_evaluator = @xltransfer.evaluation.PeriodicEvaluator()
      xltransfer.evaluation.PeriodicEvaluator.mixture_or_task_name = 'xlt_xnli_zeroshot'
      xltransfer.evaluation.PeriodicEvaluator.output_dir = %MODEL_DIR

  Each call writes a complete eval directory, `{output_dir}/zeroshot/step_{step}`, and returns
  the metrics as `zeroshot/{target}/{lang}/{metric}` scalars (plus each target's avg_metric)
  for the trainer's summaries. Batches are sharded by the gin-configured partitioner, which
  describes the trainer's own mesh.
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
    results = evaluator.evaluate(params, step=step, checkpoint=f"training step {int(step)}")
    return flat_scalars(results, prefix="zeroshot/")
