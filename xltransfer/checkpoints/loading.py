"""Loading a model's parameters from a checkpoint of any supported format, into a sharding.

Formats, detected in this order: a trainer checkpoint step (`MODEL_DIR/checkpoint_N`, with
`params/` and `progress/`) or a trainer run directory (its latest step); a native params
checkpoint (`xltransfer convert` output, checkpoints/native.py); a HF MT5 directory
(checkpoints/hf.py); a T5X checkpoint in any of its three formats (checkpoints/t5x.py). Every
importer reads each array straight into the target sharding and every shape is checked against
the model, so a checkpoint that does not fit is a CheckpointError naming what differs. The
trainer (INITIAL_CHECKPOINT_PATH) and the evaluator (CHECKPOINT_PATH) both load through here;
restoring a whole train state (optimizer included) is train/'s business.
"""
import glob
import importlib
import logging
import os
from typing import Any, Optional, Tuple

import jax
import numpy as np

from xltransfer.errors import CheckpointError

# A trainer run directory holds `checkpoint_<step>/` (orbax's step prefix; train/checkpointing).
STEP_PREFIX = "checkpoint"


def with_shardings(abstract_tree, shardings):
  """The abstract tree with each leaf's sharding set (what orbax restores into)."""
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      abstract_tree, shardings)


def latest_trainer_step_dir(path: str) -> Optional[str]:
  steps = []
  for candidate in glob.glob(os.path.join(path, f"{STEP_PREFIX}_*")):
    suffix = os.path.basename(candidate)[len(STEP_PREFIX) + 1:]
    if suffix.isdigit() and os.path.isdir(os.path.join(candidate, "params")):
      steps.append((int(suffix), candidate))
  return max(steps)[1] if steps else None


def is_hf_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and bool(
      glob.glob(os.path.join(path, "*.safetensors")) or
      glob.glob(os.path.join(path, "pytorch_model*.bin")))


def is_t5x_checkpoint(path: str) -> bool:
  """T5X legacy (`checkpoint` msgpack file) or orbax (`state/` item or orbax metadata)."""
  if path.startswith("gs://"):
    return True  # the released T5X checkpoints; the importer reads gs:// itself
  if os.path.isfile(path):
    return os.path.basename(path) == "checkpoint"
  markers = ("checkpoint", "_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA")
  return any(os.path.exists(os.path.join(path, m)) for m in markers) or os.path.isdir(
      os.path.join(path, "state"))


def _check_shapes(params, abstract_params, path: str, kind: str):
  flat_expected = {jax.tree_util.keystr(k): v.shape
                   for k, v in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  flat_got = {jax.tree_util.keystr(k): np.shape(v)
              for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(set(flat_expected) - set(flat_got))
  extra = sorted(set(flat_got) - set(flat_expected))
  wrong = sorted(k for k in set(flat_expected) & set(flat_got) if flat_expected[k] != flat_got[k])
  if missing or extra or wrong:
    details = []
    if missing:
      details.append(f"missing {missing[:5]}")
    if extra:
      details.append(f"unexpected {extra[:5]}")
    if wrong:
      details.append("shape mismatch " + ", ".join(
          f"{k}: checkpoint {flat_got[k]} vs model {flat_expected[k]}" for k in wrong[:5]))
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path} ({kind}) does not fit the model "
                          f"config: {'; '.join(details)}")


def format_loader(module_name: str, function_name: str, path: str, kind: str):
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path} is a {kind} checkpoint, but the "
                          f"{kind} importer ({module_name}) cannot be imported: {e}") from e
  if not hasattr(module, function_name):
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path} is a {kind} checkpoint, but "
                          f"{module_name} has no {function_name}()")
  return getattr(module, function_name)


def load_initial_params(path: str, model, param_shardings) -> Tuple[Any, str]:
  """Loads parameters from INITIAL_CHECKPOINT_PATH: returns (params, description of the kind).

  Accepted: a trainer checkpoint step (`.../checkpoint_N`) or a run directory (its latest
  step), a native params checkpoint (`xltransfer convert`), a HF MT5 directory, a T5X
  checkpoint. Only the parameters are loaded: the optimizer starts fresh at step 0. The
  checkpoint's subtrees in `model.dropped_subtrees` (a dual encoder's: the decoder) are not
  read; anything else that does not fit the model is a CheckpointError.
  """
  if not path.startswith("gs://") and not os.path.exists(path):
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path}: no such file or directory")
  abstract = model.abstract_params()
  # Subtrees of the checkpoint that the model does not hold (a dual encoder's: the decoder).
  drop = tuple(model.dropped_subtrees)
  if drop:
    logging.info("the %s model holds no %s: not read from %s", model.kind, " or ".join(drop),
                 path)
  if path.startswith("gs://"):
    load = format_loader("xltransfer.checkpoints.t5x", "load_t5x_params", path, "T5X")
    return load(path, abstract, param_shardings, drop_subtrees=drop), f"T5X checkpoint {path}"
  target = with_shardings(abstract, param_shardings)
  step_dir = None
  if os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "progress")):
    step_dir = path
  elif latest_trainer_step_dir(path):
    step_dir = latest_trainer_step_dir(path)
  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  if step_dir is not None:
    try:
      params = native.restore_tree(os.path.join(step_dir, "params"), target, drop)
    except CheckpointError as e:
      raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {step_dir}: {e}") from e
    return params, f"xltransfer trainer checkpoint {step_dir}"
  if native.is_native_checkpoint(path):
    params, _ = native.load_params(path, abstract, param_shardings, drop_subtrees=drop)
    return params, f"xltransfer params checkpoint {path}"
  if is_hf_checkpoint(path):
    load = format_loader("xltransfer.checkpoints.hf", "load_hf_checkpoint", path, "HF")
    params, kind = load(path, model.config, drop_subtrees=drop)[0], f"HF checkpoint {path}"
  elif is_t5x_checkpoint(path):
    load = format_loader("xltransfer.checkpoints.t5x", "load_t5x_params", path, "T5X")
    # The importer reads each array straight into its sharding and checks every shape.
    return load(path, abstract, param_shardings, drop_subtrees=drop), f"T5X checkpoint {path}"
  else:
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path}: not a recognised checkpoint (expected "
                          "an xltransfer run directory or checkpoint_N, an `xltransfer convert` "
                          "output, a HF MT5 directory or a T5X checkpoint)")
  if model.config.scan_layers and _has_unscanned_layers(params):
    from xltransfer.checkpoints import layout  # pylint: disable=import-outside-toplevel
    params = layout.stack_layers(params, model.config)
  _check_shapes(params, abstract, path, kind)
  def place(value, sharding, leaf):
    # Every host holds the full array; each device takes its shard (works across hosts).
    host = np.asarray(value, leaf.dtype)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  params = jax.tree.map(place, params, param_shardings, abstract)
  return params, kind


def _has_unscanned_layers(params) -> bool:
  return any("layers_0" in stack for stack in (params.get("encoder", {}), params.get("decoder", {})))


def is_t5x_initial_checkpoint(path: str) -> bool:
  """Whether `load_initial_params` reads `path` as a T5X checkpoint (the same order of tests)."""
  if path.startswith("gs://"):
    return True
  if os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "progress")):
    return False
  if latest_trainer_step_dir(path):
    return False
  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  if native.is_native_checkpoint(path) or is_hf_checkpoint(path):
    return False
  return is_t5x_checkpoint(path)
