"""Trainer checkpoints: orbax CheckpointManager (async, save period, keep N) and start-up logic.

A run directory (MODEL_DIR) holds `checkpoint_<step>/` with four items:
  params     the parameter tree (T5X names)        opt_state  the optimizer state
  progress   JSON: step, input position            run        JSON: the run's identity
At start the run resumes from MODEL_DIR's latest checkpoint; only when there is none does it
load INITIAL_CHECKPOINT_PATH (ours, a native params checkpoint, T5X or HF). A MODEL_DIR whose
checkpoints come from a different model kind (seq2seq, dual_encoder), model config, task or
initial checkpoint is refused, so a stale directory can never silently shadow the intended
starting point. A model that holds part of the mT5 tree (the dual encoder: no decoder) loads
a full initial checkpoint with the rest left unread.
"""
import dataclasses
import glob
import importlib
import logging
import os
from typing import Any, Dict, Optional, Tuple

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from xltransfer.errors import CheckpointError
from xltransfer.train.state import TrainState

STEP_PREFIX = "checkpoint"
ITEMS = ("params", "opt_state", "progress", "run")


# Run identities written before the model kind was recorded are all seq2seq runs.
MODEL_KIND_KEY = "model_kind"
UNRECORDED_MODEL_KIND = "seq2seq"


def run_identity(model_config, mixture_or_task_name: str,
                 initial_checkpoint_path: Optional[str],
                 model_kind: str = UNRECORDED_MODEL_KIND) -> Dict[str, Any]:
  """What must not change between a run and a resumption of it (JSON-serialisable);
  `model_kind` is the model's `kind` ("seq2seq", "dual_encoder")."""
  config = {k: v for k, v in dataclasses.asdict(model_config).items()
            # Dropout and how layers are executed may change on resume; the network may not.
            if k not in ("dropout_rate", "remat_policy", "dtype")}
  return {MODEL_KIND_KEY: model_kind, "model_config": config,
          "mixture_or_task_name": mixture_or_task_name,
          "initial_checkpoint_path": initial_checkpoint_path}


def _with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      abstract_tree, shardings)


@gin.configurable(module="xltransfer.train")
class CheckpointManager:
  """Saves and restores the train state and input position in MODEL_DIR."""

  def __init__(self, model_dir: str, period: int = 1000, keep: Optional[int] = None,
               async_save: bool = True):
    self.model_dir = os.path.abspath(model_dir)
    self.period = period
    self.async_save = async_save
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=period, max_to_keep=keep, step_prefix=STEP_PREFIX, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.model_dir, options=options, item_names=ITEMS)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.model_dir, f"{STEP_PREFIX}_{step}")

  def save(self, state: TrainState, input_position: int, identity: Dict[str, Any],
           force: bool = False, batch_size: Optional[int] = None) -> bool:
    step = int(np.asarray(state.step.addressable_data(0)))
    saved = self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        progress=ocp.args.JsonSave({"step": step, "input_position": int(input_position),
                                    "batch_size": batch_size}),
        run=ocp.args.JsonSave(identity)), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s%s", step, self.step_dir(step),
                   " (async)" if self.async_save else "")
    return saved

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def read_identity(self, step: int) -> Dict[str, Any]:
    path = os.path.join(self.step_dir(step), "run", "metadata")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))
      return dict(restored["run"])
    except Exception as e:  # orbax raises several types for a damaged item.
      raise CheckpointError(f"{path}: cannot read the run identity of this checkpoint ({e})") from e

  def check_identity(self, step: int, identity: Dict[str, Any]):
    stored = self.read_identity(step)
    stored.setdefault(MODEL_KIND_KEY, UNRECORDED_MODEL_KIND)
    identity = dict(identity)
    identity.setdefault(MODEL_KIND_KEY, UNRECORDED_MODEL_KIND)
    differences = []
    for key in sorted(set(stored) | set(identity)):
      if stored.get(key) != identity.get(key):
        if isinstance(stored.get(key), dict) and isinstance(identity.get(key), dict):
          for sub in sorted(set(stored[key]) | set(identity[key])):
            if stored[key].get(sub) != identity[key].get(sub):
              differences.append(f"{key}.{sub}: checkpoint has {stored[key].get(sub)!r}, this "
                                 f"run has {identity[key].get(sub)!r}")
        else:
          differences.append(f"{key}: checkpoint has {stored.get(key)!r}, this run has "
                             f"{identity.get(key)!r}")
    if not differences:
      return
    kinds = stored[MODEL_KIND_KEY], identity[MODEL_KIND_KEY]
    if kinds[0] != kinds[1]:
      raise CheckpointError(
          f"MODEL_DIR {self.model_dir} holds a {kinds[0]} model's checkpoint (step {step}), but "
          f"this run trains a {kinds[1]} model; the parameter trees differ, so it cannot resume "
          "there:\n  " + "\n  ".join(differences) +
          f"\nUse a fresh MODEL_DIR; to start the {kinds[1]} model from that checkpoint, set "
          f"INITIAL_CHECKPOINT_PATH to {self.model_dir}.")
    raise CheckpointError(
        f"MODEL_DIR {self.model_dir} holds a checkpoint (step {step}) from a different run:\n  "
        + "\n  ".join(differences) +
        "\nResuming would silently ignore this run's settings. Use a fresh MODEL_DIR, or "
        "delete the old checkpoints if they are no longer needed.")

  def restore(self, step: int, abstract_state: TrainState, shardings: TrainState,
              batch_size: Optional[int] = None) -> Tuple[TrainState, int]:
    target = _with_shardings(abstract_state, shardings)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(target.params),
          opt_state=ocp.args.StandardRestore(target.opt_state),
          progress=ocp.args.JsonRestore()))
    except Exception as e:  # shape/structure mismatches surface as several error types.
      raise CheckpointError(f"{self.step_dir(step)}: cannot restore into this run's state "
                            f"({type(e).__name__}: {e})") from e
    progress = restored["progress"]
    saved_batch = progress.get("batch_size")
    if batch_size is not None and saved_batch not in (None, batch_size):
      logging.warning("the checkpoint's input position counts batches of %d examples but "
                      "BATCH_SIZE is now %d: the resumed run will not see exactly the data an "
                      "uninterrupted run would", saved_batch, batch_size)
    state = TrainState(step=jax.device_put(np.int32(progress["step"]), shardings.step),
                       params=restored["params"], opt_state=restored["opt_state"])
    return state, int(progress["input_position"])


# ---- initial checkpoints from elsewhere ----

def _latest_trainer_step_dir(path: str) -> Optional[str]:
  steps = []
  for candidate in glob.glob(os.path.join(path, f"{STEP_PREFIX}_*")):
    suffix = os.path.basename(candidate)[len(STEP_PREFIX) + 1:]
    if suffix.isdigit() and os.path.isdir(os.path.join(candidate, "params")):
      steps.append((int(suffix), candidate))
  return max(steps)[1] if steps else None


def _is_hf_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and bool(
      glob.glob(os.path.join(path, "*.safetensors")) or
      glob.glob(os.path.join(path, "pytorch_model*.bin")))


def _is_t5x_checkpoint(path: str) -> bool:
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


def _importer(module_name: str, function_name: str, path: str, kind: str):
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
    load = _importer("xltransfer.checkpoints.t5x", "load_t5x_params", path, "T5X")
    return load(path, abstract, param_shardings, drop_subtrees=drop), f"T5X checkpoint {path}"
  target = _with_shardings(abstract, param_shardings)
  step_dir = None
  if os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "progress")):
    step_dir = path
  elif _latest_trainer_step_dir(path):
    step_dir = _latest_trainer_step_dir(path)
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
  if _is_hf_checkpoint(path):
    load = _importer("xltransfer.checkpoints.hf", "load_hf_checkpoint", path, "HF")
    params, kind = load(path, model.config, drop_subtrees=drop)[0], f"HF checkpoint {path}"
  elif _is_t5x_checkpoint(path):
    load = _importer("xltransfer.checkpoints.t5x", "load_t5x_params", path, "T5X")
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
