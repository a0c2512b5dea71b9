"""The evaluation's files (layout in xltransfer/evaluation/evaluator.py's docstring): where
predictions go, their .meta.json, atomic writes, the output directory's identity (which
checkpoint and step its files belong to) and the replacement of another evaluation's files.

Only process 0 writes; every file appears by atomic rename, and a write that finds the disk full
raises DiskFullError naming the file.
"""
import json
import logging
import os
from typing import Dict, List, Optional

import jax
import tensorflow as tf

from xltransfer import disk_full
from xltransfer.errors import DataFormatError, UserError

PREDICTIONS_DIR = "predictions"
METRICS_FILE = "metrics.json"
INFO_FILE = "eval_info.json"
DONE_FILE = "DONE"
IDENTITY_FILE = "eval_identity.json"
META_SUFFIX = ".meta.json"
TENSORBOARD_DIR = "tensorboard"

# No space left on the device while writing an output file; the message names it.
DiskFullError = disk_full.DiskFullError


class StaleOutputError(UserError):
  """The output directory holds outputs of another checkpoint, step, split or settings, and
  `EvalSettings.no_overwrite` forbids replacing them."""


def predictions_path(output_dir: str, target: str, lang: str) -> str:
  return os.path.join(output_dir, PREDICTIONS_DIR, target, f"{lang}.jsonl")


def meta_path(predictions_file: str) -> str:
  """The .meta.json next to a predictions file: what it was made from."""
  return predictions_file[:-len(".jsonl")] + META_SUFFIX


def read_records(path: str) -> List[dict]:
  with tf.io.gfile.GFile(path, "r") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  try:
    data = json.loads(text)
  except ValueError as e:
    raise DataFormatError(path, None, f"not JSON ({e})") from None
  if not isinstance(data, dict):
    raise DataFormatError(path, None, "not a JSON object")
  return data


def remove(path: str):
  """Removes a file if it exists (process 0 only, as every write)."""
  if jax.process_index() == 0 and tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


def write_atomic(path: str, text: str):
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
      remove(partial)
    except (OSError, tf.errors.OpError):
      pass
    # The files written before this one are intact (each appeared by rename): a rerun resumes.
    raise disk_full.disk_full_error(path, len(text.encode("utf-8"))) from None


def write_records(path: str, records: List[dict]):
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def output_identity(checkpoint: str, step: int) -> dict:
  """What the outputs of an evaluation belong to: the checkpoint (an existing local path made
  absolute, so `ckpt` and `./ckpt/` agree) and the step."""
  if "://" not in checkpoint and os.path.exists(checkpoint):
    checkpoint = os.path.normpath(os.path.abspath(checkpoint))
  elif "://" in checkpoint:
    checkpoint = checkpoint.rstrip("/")
  return {"checkpoint": checkpoint, "step": int(step)}


def other_outputs(output_dir: str, identity: dict) -> Optional[str]:
  """What the directory holds that is not an evaluation of `identity` (None: nothing)."""
  path = os.path.join(output_dir, IDENTITY_FILE)
  if tf.io.gfile.exists(path):
    recorded = read_json(path)
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
  other = other_outputs(output_dir, identity)
  if other is not None and no_overwrite:
    raise StaleOutputError(
        f"{other}; refused (--no_overwrite): pass a fresh output directory (--output_dir), "
        f"delete {output_dir}, or leave out --no_overwrite to recompute them")
  return identity


def recorded_identity(predictions_file: str) -> Optional[dict]:
  """The checkpoint and step a predictions file's .meta.json names (None: no readable meta)."""
  meta_file = meta_path(predictions_file)
  if not tf.io.gfile.exists(meta_file):
    return None
  try:
    meta = read_json(meta_file)
  except DataFormatError:
    return None
  return {"checkpoint": meta.get("checkpoint"), "step": meta.get("step")}


def remove_predictions(predictions_file: str):
  """Removes a predictions file, then its .meta.json: a predictions file never exists
  without the meta that says what made it."""
  remove(predictions_file)
  remove(meta_path(predictions_file))


def replace_other_outputs(output_dir: str, identity: dict):
  """Makes `output_dir` the evaluation of `identity`, removing what another checkpoint or step
  left there (see "Another checkpoint" in evaluator.py's docstring). Order matters for a crash
  midway: first the summaries of the old evaluation, then the new eval_identity.json, then the
  old predictions, each of which names its own checkpoint and step until it is gone."""
  other = other_outputs(output_dir, identity)
  if other is None or jax.process_index() != 0:
    return
  stale = []
  for path in sorted(tf.io.gfile.glob(os.path.join(output_dir, PREDICTIONS_DIR, "*", "*.jsonl"))):
    if recorded_identity(path) != identity:
      stale.append(path)
  # A .meta.json without its predictions file: a crash before the file's rename.
  orphans = [meta for meta in tf.io.gfile.glob(os.path.join(output_dir, PREDICTIONS_DIR, "*",
                                                            "*" + META_SUFFIX))
             for predictions in [meta[:-len(META_SUFFIX)] + ".jsonl"]
             if not tf.io.gfile.exists(predictions)
             and recorded_identity(predictions) != identity]
  logging.warning("eval: %s; recomputing it for checkpoint %s (step %d): replacing %d "
                  "predictions files%s and the old %s, %s and %s", other, identity["checkpoint"],
                  identity["step"], len(stale),
                  f" ({', '.join(os.path.relpath(p, output_dir) for p in stale)})" if stale
                  else "", METRICS_FILE, INFO_FILE, TENSORBOARD_DIR)
  for name in (DONE_FILE, METRICS_FILE, INFO_FILE):
    remove(os.path.join(output_dir, name))
  tensorboard = os.path.join(output_dir, TENSORBOARD_DIR)
  if tf.io.gfile.isdir(tensorboard):
    tf.io.gfile.rmtree(tensorboard)
  write_atomic(os.path.join(output_dir, IDENTITY_FILE), json.dumps(identity, indent=2))
  for path in stale:
    remove_predictions(path)
  for path in orphans:
    remove(path)


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


def write_summaries(output_dir: str, results: Dict[str, Dict[str, dict]], step: int):
  """The metrics as TensorBoard scalars at `step`, under output_dir/tensorboard."""
  # simple_value events: TensorBoard and EventAccumulator.Scalars both read them.
  from xltransfer import scalar_summaries  # pylint: disable=import-outside-toplevel
  scalars = flat_scalars(results)
  if not scalars:
    return
  directory = os.path.join(output_dir, TENSORBOARD_DIR)
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
