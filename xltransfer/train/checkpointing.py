"""Trainer checkpoints: orbax CheckpointManager (async, save period, keep N) and start-up logic.

A run directory (MODEL_DIR) holds `checkpoint_<step>/` with five items:
  params     the parameter tree (T5X names)        opt_state  the optimizer state
  progress   JSON: step, input position            run        JSON: the run's identity
  digests    JSON: a digest of every array of params and opt_state, checked on restore
             (xltransfer/checkpoints/digests.py); a damaged checkpoint is refused, or skipped
             for the newest earlier one that verifies with `fallback_to_verified_checkpoint`
At start the run resumes from MODEL_DIR's latest checkpoint; only when there is none does it
load INITIAL_CHECKPOINT_PATH (ours, a native params checkpoint, T5X or HF). From a T5X
checkpoint it restores, as T5X's fine-tuning does, the parameters, the Adafactor state and the
step (`load_initial_state`; `restore_optimizer_state=False` loads the parameters only); from
the others only the parameters, with a fresh optimizer at step 0. A MODEL_DIR whose
checkpoints come from a different model kind (seq2seq, dual_encoder) or network is refused, so
a stale directory can never silently shadow the intended starting point; one trained with
other settings (task, data, schedule, optimizer, seeds: `run_identity`) is refused with the
list of changes unless the run explicitly allows them (`check_identity`). A model that holds part of the mT5 tree (the dual encoder: no decoder) loads
a full initial checkpoint with the rest left unread.
"""
import dataclasses
import glob
import importlib
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from jax.sharding import PartitionSpec

from xltransfer.checkpoints import digests
from xltransfer.errors import CheckpointError, ConfigError
from xltransfer.train import optimizer as optimizer_lib
from xltransfer.train.state import TrainState

STEP_PREFIX = "checkpoint"
# `digests` (xltransfer/checkpoints/digests.py) holds a digest of every array of `params` and
# `opt_state`, checked on restore; checkpoints written before it existed have none.
ITEMS = ("params", "opt_state", "progress", "run", "digests")
DIGESTS_ITEM = "digests"
FALLBACK_BINDING = "xltransfer.train.CheckpointManager.fallback_to_verified_checkpoint=True"
# Where a damaged checkpoint is moved when the run falls back past it (outside orbax's
# `checkpoint_<step>` names, so it is neither resumed from nor overwritten).
DAMAGED_PREFIX = "damaged_checkpoint"
# `progress` names the layout of the Adafactor second moments in `opt_state`; checkpoints
# without it predate xltransfer's T5X layout (optimizer.factoring_before_t5x_layout).
LAYOUT_KEY = "optimizer_state_layout"


# Run identities written before the model kind was recorded are all seq2seq runs.
MODEL_KIND_KEY = "model_kind"
UNRECORDED_MODEL_KIND = "seq2seq"
# Keys whose change means another network: never resumable, whatever the switch says.
NETWORK_KEYS = (MODEL_KIND_KEY, "model_config")
ALLOW_CHANGES_BINDING = "xltransfer.train.train.allow_changed_settings = True"


def run_identity(model_config, mixture_or_task_name: str,
                 initial_checkpoint_path: Optional[str],
                 model_kind: str = UNRECORDED_MODEL_KIND,
                 settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """What must not change between a run and a resumption of it (JSON-serialisable).

  `model_kind` is the model's `kind` ("seq2seq", "dual_encoder"); `model_config` records the
  network (its dropout and activation dtype, which shape the trajectory but not the
  parameter tree, belong in `settings` with the rest of what shapes the trajectory: data,
  schedule, optimizer, seeds; see `run.trajectory_settings`). TRAIN_STEPS, EVAL_PERIOD and
  checkpoint/log periods are not part of it: they do not change the steps taken.
  """
  config = {k: v for k, v in dataclasses.asdict(model_config).items()
            # The network only; execution choices are `settings` or free to change.
            if k not in ("dropout_rate", "remat_policy", "dtype")}
  identity = {MODEL_KIND_KEY: model_kind, "model_config": config,
              "mixture_or_task_name": mixture_or_task_name,
              "initial_checkpoint_path": initial_checkpoint_path}
  identity.update(settings or {})
  return json.loads(json.dumps(identity, default=str))  # as it reads back from the checkpoint


def _identity_differences(stored: Dict[str, Any], current: Dict[str, Any]):
  """([(key, old, new)], [keys the checkpoint does not record]) over the keys both record;
  dict values (sections such as `optimizer`) compare key by key, also over common keys, so a
  checkpoint written before a setting was recorded still resumes."""
  differences, unrecorded = [], []
  for key in sorted(set(stored) | set(current)):
    if key not in stored:
      unrecorded.append(key)
      continue
    if key not in current:
      continue  # recorded by a later version of this identity: nothing to compare against
    old, new = stored[key], current[key]
    if isinstance(old, dict) and isinstance(new, dict) and key in _SECTIONS:
      for sub in sorted(set(old) | set(new)):
        if sub not in old:
          unrecorded.append(f"{key}.{sub}")
        elif sub in new and old[sub] != new[sub]:
          differences.append((f"{key}.{sub}", old[sub], new[sub]))
    elif old != new:
      differences.append((key, old, new))
  return differences, unrecorded


# Identity entries that are groups of named settings (compared setting by setting); any other
# dict (feature lengths, mixture rates) is one value.
_SECTIONS = ("model_config", "dataset", "learning_rate", "optimizer")


def _with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      abstract_tree, shardings)


@gin.configurable(module="xltransfer.train")
class CheckpointManager:
  """Saves and restores the train state and input position in MODEL_DIR."""

  def __init__(self, model_dir: str, period: int = 1000, keep: Optional[int] = None,
               async_save: bool = True, fallback_to_verified_checkpoint: bool = False):
    """`fallback_to_verified_checkpoint`: when the checkpoint to restore fails its digests,
    restore the newest earlier one that verifies (the damaged ones are moved aside) instead
    of stopping."""
    self.model_dir = os.path.abspath(model_dir)
    self.period = period
    self.async_save = async_save
    self.fallback_to_verified_checkpoint = fallback_to_verified_checkpoint
    # Steps this process wrote (digests computed from the arrays in memory) or restored and
    # verified: the only ones it may call verified.
    self._verified_steps = set()
    self._unverified_steps = set()  # restored without digests to check
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
    """Saves `state` at its step (when the save period or `force` says so) with the digests
    of its arrays, computed on the devices from the arrays in memory and written before
    orbax finalises the checkpoint (awaited in its background commit when saving async)."""
    step = int(np.asarray(state.step.addressable_data(0)))
    if not (force or self._manager.should_save(step)):
      return False
    # An async save copies the arrays to the host before it returns: the digests start after
    # that (not competing with it for the cores) and are awaited in its background commit.
    # A synchronous save awaits them inside `save`, so they start first.
    pending = digests.start({"params": state.params, "opt_state": state.opt_state},
                            dispatch=not self.async_save)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state.params),
          opt_state=ocp.args.StandardSave(state.opt_state),
          progress=ocp.args.JsonSave({"step": step, "input_position": int(input_position),
                                      "batch_size": batch_size,
                                      LAYOUT_KEY: optimizer_lib.STATE_LAYOUT}),
          run=ocp.args.JsonSave(identity),
          digests=digests.DigestsSave(pending)), force=force)
    except BaseException:
      pending.cancel("the checkpoint save failed before they started")
      raise
    if not saved:
      pending.cancel("orbax did not save this step")
      return False
    pending.dispatch()  # before the caller's next step may donate the arrays
    self._verified_steps.add(step)
    logging.info("checkpoint: saving step %d to %s%s", step, self.step_dir(step),
                 " (async)" if self.async_save else "")
    return True

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

  def check_identity(self, step: int, identity: Dict[str, Any],
                     allow_changes: bool = False) -> List[str]:
    """Refuses to resume checkpoint `step` under another identity (`run_identity`).

    Another model kind or network is always refused. Any other difference (data, schedule,
    optimizer, seeds, ...) is refused with the list of changes (checkpoint -> this run),
    unless `allow_changes` (gin: xltransfer.train.train.allow_changed_settings), which logs
    them. Only keys both identities record are compared (a checkpoint of an earlier version
    records fewer: logged). Returns the allowed changes as "key: old -> new" lines.
    """
    stored = self.read_identity(step)
    stored.setdefault(MODEL_KIND_KEY, UNRECORDED_MODEL_KIND)
    identity = json.loads(json.dumps(identity, default=str))
    identity.setdefault(MODEL_KIND_KEY, UNRECORDED_MODEL_KIND)
    differences, unrecorded = _identity_differences(stored, identity)
    if unrecorded:
      logging.info("checkpoint %s records fewer settings than this version checks (it was "
                   "written by an earlier xltransfer): %s cannot be compared on this resume",
                   self.step_dir(step), ", ".join(unrecorded))
    if not differences:
      return []
    kinds = stored[MODEL_KIND_KEY], identity[MODEL_KIND_KEY]
    listed = "\n  ".join(f"{key}: checkpoint has {old!r}, this run has {new!r}"
                         for key, old, new in differences)
    if kinds[0] != kinds[1]:
      raise CheckpointError(
          f"MODEL_DIR {self.model_dir} holds a {kinds[0]} model's checkpoint (step {step}), but "
          f"this run trains a {kinds[1]} model; the parameter trees differ, so it cannot resume "
          f"there:\n  {listed}\nUse a fresh MODEL_DIR; to start the {kinds[1]} model from that "
          f"checkpoint, set INITIAL_CHECKPOINT_PATH to {self.model_dir}.")
    if any(key.split(".")[0] in NETWORK_KEYS for key, _, _ in differences):
      raise CheckpointError(
          f"MODEL_DIR {self.model_dir} holds a checkpoint (step {step}) from a different run "
          f"(another network):\n  {listed}\nResuming would silently ignore this run's settings. "
          "Use a fresh MODEL_DIR (with INITIAL_CHECKPOINT_PATH set to this one to start from "
          "its parameters), or delete the old checkpoints if they are no longer needed.")
    changes = [f"{key}: {old!r} -> {new!r}" for key, old, new in differences]
    if allow_changes:
      logging.warning("resuming %s (step %d) with changed settings, as "
                      "allow_changed_settings = True asks (checkpoint -> this run):\n  %s",
                      self.model_dir, step, "\n  ".join(changes))
      return changes
    raise CheckpointError(
        f"MODEL_DIR {self.model_dir} holds a checkpoint (step {step}) of a run with other "
        "settings than this one (checkpoint -> this run):\n  " + "\n  ".join(changes) +
        "\nResuming would continue that run under changed settings, so it would no longer be "
        "the run its records describe. To resume it as it was, rerun with its settings (see "
        "its operative_config-<step>.gin in MODEL_DIR); to change them deliberately from step "
        f"{step} on, add --gin.{ALLOW_CHANGES_BINDING.replace(' = ', '=')} (the change is "
        "logged and the new settings recorded); or start afresh in a new MODEL_DIR.")

  def read_progress(self, step: int) -> Dict[str, Any]:
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          progress=ocp.args.JsonRestore()))
      return dict(restored["progress"])
    except Exception as e:  # orbax raises several types for a damaged item.
      raise CheckpointError(f"{self.step_dir(step)}: cannot read its progress item ({e})") from e

  def check_optimizer_layout(self, step: int, progress: Dict[str, Any], optimizer):
    """Refuses a checkpoint whose Adafactor second moments are stored in the layout of
    xltransfer before it followed T5X's, for a run where that layout differs: restoring it
    would fail on shapes, or (square matrices) silently swap rows and columns."""
    layout = progress.get(LAYOUT_KEY)
    if layout == optimizer_lib.STATE_LAYOUT:
      return
    if layout is not None:
      raise CheckpointError(f"{self.step_dir(step)}: optimizer state layout {layout!r} is not "
                            f"this version's {optimizer_lib.STATE_LAYOUT!r}; resume it with the "
                            "xltransfer version that wrote it")
    changes = optimizer.legacy_layout_changes()
    if not changes:
      return
    listed = "\n  ".join(
        f"{name}: rows {old.row_dims} columns {old.col_dims} -> rows {new.row_dims} columns "
        f"{new.col_dims}" for name, old, new in changes[:8])
    more = f"\n  ... and {len(changes) - 8} more" if len(changes) > 8 else ""
    raise CheckpointError(
        f"{self.step_dir(step)} was written before xltransfer stored Adafactor's factored second "
        f"moments in T5X's layout, and {len(changes)} parameters of this model are stored "
        f"differently now (which dimension v_row and v_col keep):\n  {listed}{more}\n"
        "Resuming would misread its optimizer state. Finish this run with the xltransfer version "
        "that started it, or start a new MODEL_DIR with INITIAL_CHECKPOINT_PATH set to this "
        "checkpoint (its parameters load; the optimizer starts fresh at step 0).")

  def restore(self, step: int, abstract_state: TrainState, shardings: TrainState,
              batch_size: Optional[int] = None, optimizer=None) -> Tuple[TrainState, int]:
    """Restores step `step` and checks every array against the digests written with it;
    with `optimizer` (the run's `Optimizer`) first checks that the checkpoint's optimizer
    state layout is this version's (`check_optimizer_layout`).

    A checkpoint written before digests existed restores with a warning that it could not be
    verified. A damaged one (an array whose digest differs, or data orbax cannot decode) is a
    CheckpointError naming the files and arrays and how to fall back; with
    `fallback_to_verified_checkpoint` the newest earlier checkpoint that restores cleanly is
    restored instead, and the damaged ones are moved to `damaged_checkpoint_<step>`. The step
    restored is the returned state's `step`."""
    try:
      return self._restore_checked(step, abstract_state, shardings, batch_size, optimizer)
    except DamagedCheckpointError as damage:
      first_damage = damage
    earlier = sorted((s for s in self.all_steps() if s < step), reverse=True)
    if not self.fallback_to_verified_checkpoint:
      if earlier:
        how = (f"To resume from the newest earlier checkpoint that verifies (trying "
               f"{self.step_dir(earlier[0])} first), rerun the same command with "
               f"--gin.{FALLBACK_BINDING}; the damaged checkpoint is then moved to "
               f"{self._damaged_dir(step)}. Or replace {self.step_dir(step)} with a good copy.")
      else:
        how = (f"MODEL_DIR holds no earlier checkpoint to fall back to: replace "
               f"{self.step_dir(step)} with a good copy, or delete it to train from the start.")
      raise DamagedCheckpointError(
          step, f"{first_damage}\nThe run stops rather than train on corrupt values. {how}")
    damaged = [step]
    for candidate in earlier:
      try:
        restored = self._restore_checked(candidate, abstract_state, shardings, batch_size,
                                         optimizer)
      except DamagedCheckpointError as damage:
        logging.warning("%s", damage)
        damaged.append(candidate)
        continue
      for bad in damaged:  # else orbax would refuse to write these steps again
        self._move_aside(bad)
      verified = ("which verifies" if candidate in self._verified_steps else
                  "which has no digests to verify it against")
      logging.warning(
          "falling back (%s): checkpoint %s is damaged (%s); resuming from %s, %s. The damaged "
          "checkpoint(s) are kept as %s.", FALLBACK_BINDING, self.step_dir(step), first_damage,
          self.step_dir(candidate), verified, ", ".join(self._damaged_dir(s) for s in damaged))
      return restored
    raise DamagedCheckpointError(
        step, f"{first_damage}\nNo earlier checkpoint in MODEL_DIR {self.model_dir} restores "
        f"cleanly either (tried {', '.join(str(s) for s in earlier) or 'none: there are none'}); "
        "replace the checkpoints with good copies, or start a fresh MODEL_DIR.")

  def describe_latest_checkpoint(self) -> str:
    """The newest checkpoint in MODEL_DIR for a message, called verified only when this
    process wrote it (digests of the arrays in memory) or restored it and its digests
    matched."""
    latest = self.latest_step()
    if latest is None:
      return "no checkpoint was written before it"
    if latest in self._verified_steps:
      return f"the last verified checkpoint is {self.step_dir(latest)}"
    if latest in self._unverified_steps:
      return (f"the latest checkpoint is {self.step_dir(latest)} (restored without "
              "verification: it has no digests)")
    return (f"the latest checkpoint is {self.step_dir(latest)} (not verified: this run "
            "neither wrote nor restored it)")

  def _digests_path(self, step: int) -> str:
    return os.path.join(self.step_dir(step), DIGESTS_ITEM, "metadata")

  def _damaged_dir(self, step: int) -> str:
    return os.path.join(self.model_dir, f"{DAMAGED_PREFIX}_{step}")

  def _move_aside(self, step: int):
    if jax.process_index() == 0:
      target = self._damaged_dir(step)
      suffix = 1
      while os.path.exists(target):
        target, suffix = f"{self._damaged_dir(step)}.{suffix}", suffix + 1
      os.rename(self.step_dir(step), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"xltransfer_move_aside_{step}")
    self._manager.reload()

  def _read_digests(self, step: int) -> Optional[Dict[str, Any]]:
    path = self._digests_path(step)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      raise DamagedCheckpointError(step, f"{path}: the digest record cannot be read ({e})") from e

  def _restore_checked(self, step, abstract_state, shardings, batch_size, optimizer):
    if optimizer is not None:
      self.check_optimizer_layout(step, self.read_progress(step), optimizer)
    stored = self._read_digests(step)
    target = _with_shardings(abstract_state, shardings)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(target.params),
          opt_state=ocp.args.StandardRestore(target.opt_state),
          progress=ocp.args.JsonRestore()))
    except Exception as e:  # shape/structure mismatches surface as several error types.
      unreadable = _unreadable_stored_data(e)
      if unreadable:
        raise DamagedCheckpointError(step, f"{self.step_dir(step)} is damaged: {unreadable}") from e
      raise CheckpointError(f"{self.step_dir(step)}: cannot restore into this run's state "
                            f"({type(e).__name__}: {e})") from e
    arrays = {"params": restored["params"], "opt_state": restored["opt_state"]}
    if stored is None:
      logging.warning("checkpoint %s has no array digests (it was written before xltransfer "
                      "recorded them): restored WITHOUT verification, it could not be verified",
                      self.step_dir(step))
      self._unverified_steps.add(step)
    else:
      problems = digests.compare(stored, digests.compute(arrays))
      if problems:
        listed = "\n  ".join(
            f"{item} array {name!r} (in {os.path.join(self.step_dir(step), item)}): {what}"
            for item, name, what in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DamagedCheckpointError(
            step, f"{self.step_dir(step)} is damaged: {len(problems)} array(s) do not match the "
            f"digests written with the checkpoint ({self._digests_path(step)}):\n  {listed}{more}")
      self._verified_steps.add(step)
      logging.info("checkpoint %s: all %d arrays match the digests written with it",
                   self.step_dir(step), sum(len(v) for v in stored["items"].values()))
    progress = restored["progress"]
    saved_batch = progress.get("batch_size")
    if batch_size is not None and saved_batch not in (None, batch_size):
      logging.warning("the checkpoint's input position counts batches of %d examples but "
                      "BATCH_SIZE is now %d: the resumed run will not see exactly the data an "
                      "uninterrupted run would", saved_batch, batch_size)
    state = TrainState(step=jax.device_put(np.int32(progress["step"]), shardings.step),
                       params=restored["params"], opt_state=restored["opt_state"])
    return state, int(progress["input_position"])


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose arrays do not match the digests written with it, or cannot be
  decoded; `step` is its step."""

  def __init__(self, step: int, message: str):
    self.step = step
    super().__init__(message)


# tensorstore's error when the stored bytes of an array chunk cannot be read or decoded (a
# tree or shape that does not fit this run fails differently, before any chunk is read).
_CHUNK_READ_ERROR = re.compile(
    r'Error reading "(?P<key>[^"/]+)/(?P<chunk>[^"]*)" in OCDBT database at (?:local file )?"?'
    r'(?P<where>[^"\n]*?/(?P<item>[^/"]+)/?)"?: (?P<why>[^\n]*)')


def _unreadable_stored_data(error: Exception) -> Optional[str]:
  """'array X (chunk C) in DIR cannot be decoded: why' when `error` (or an error it was
  raised from) is tensorstore failing to read a stored chunk; else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    match = _CHUNK_READ_ERROR.search(str(error))
    if match:
      name = match["key"].replace(".", "/")
      return (f"{match['item']} array {name!r} (chunk {match['chunk']}) in "
              f"{match['where']} cannot be decoded: {match['why']}")
    error = error.__cause__ or error.__context__
  return None


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


# ---- the whole train state from a T5X checkpoint (T5X fine-tuning) ----

def _is_t5x_initial_checkpoint(path: str) -> bool:
  """Whether `load_initial_params` reads `path` as a T5X checkpoint (the same order of tests)."""
  if path.startswith("gs://"):
    return True
  if os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "progress")):
    return False
  if _latest_trainer_step_dir(path):
    return False
  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  if native.is_native_checkpoint(path) or _is_hf_checkpoint(path):
    return False
  return _is_t5x_checkpoint(path)


@dataclasses.dataclass
class InitialState:
  """The train state a run starts from when MODEL_DIR has no checkpoint."""
  state: TrainState
  description: str  # the checkpoint: "T5X checkpoint gs://...", "HF checkpoint ..."
  restored: str     # what of it, for the log


class NegatedArray:
  """An array source read with the opposite sign: T5X's momentum `m` vs optax's EMA (used both
  ways, by the import here and by the T5X export)."""

  def __init__(self, source):
    self.source = source
    self.shape = tuple(source.shape)
    self.dtype = source.dtype

  def read(self, index=None):
    return -np.asarray(self.source.read(index))


def _flat_names(tree, is_leaf=None) -> List[str]:
  """'encoder/layers/mlp/wo/kernel' names of the leaves, in jax's flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
          for path, _ in flat]


def _read_stored_moment(slots: Dict[str, Any], shape, expected, where: str):
  """One checkpoint parameter's v_row/v_col/v (host arrays) and the factoring they are in:
  `expected` (T5X's for that parameter with this optimizer's settings) or unfactored."""
  absent = [k for k in ("v_row", "v_col", "v") if k not in slots]
  if absent:
    raise ValueError(f"{where}: no {'/'.join(absent)} in the checkpoint's Adafactor state")
  stored = {k: np.asarray(slots[k].read(), np.float32) for k in ("v_row", "v_col", "v")}
  shape = tuple(int(n) for n in shape)
  unfactored = optimizer_lib.Factoring((), (), expected.batch_dims, len(shape))
  got = {k: tuple(v.shape) for k, v in stored.items()}
  if got == unfactored.slot_shapes(shape):
    return stored, unfactored
  if expected.factored and got == expected.slot_shapes(shape):
    return stored, expected
  wanted = expected.slot_shapes(shape)
  raise ValueError(
      f"{where}: stored v_row {got['v_row']}, v_col {got['v_col']}, v {got['v']} fit neither "
      f"T5X's factoring of this {shape} parameter under this Adafactor's settings (v_row "
      f"{wanted['v_row']}, v_col {wanted['v_col']}, v {wanted['v']}) nor a full v (was it "
      "trained with another min_dim_size_to_factor or factored?)")


def _param_optimizer_state(name, shape, axes, factoring, located, slots, ckpt_shapes,
                           optimizer):
  """(v_row, v_col, v, momentum source or None) of one model parameter, in its layout."""
  how, source, layer = located
  rule = optimizer.factor_rule
  shape = tuple(int(n) for n in shape)
  axes = tuple(axes)
  momentum = None
  if how == "same":
    stored, stored_f = _read_stored_moment(slots[source], shape, rule(shape, axes, name), name)
    moments = optimizer_lib.convert_second_moment(stored, stored_f, factoring, shape, name)
    m = slots[source].get("m")
    momentum = m if m is not None and tuple(m.shape) == shape else None
  elif how == "stacked":  # a scanned parameter from unscanned layers_0, layers_1, ...
    if len(source) != shape[1]:
      raise ValueError(f"{name}: the checkpoint has {len(source)} layers, the model {shape[1]}")
    layer_shape, layer_axes = shape[:1] + shape[2:], axes[:1] + axes[2:]
    layer_f = factoring.without_dim(1)
    per_layer = []
    for layer_name in source:
      stored, stored_f = _read_stored_moment(slots[layer_name], layer_shape,
                                             rule(layer_shape, layer_axes, layer_name),
                                             layer_name)
      per_layer.append(optimizer_lib.convert_second_moment(stored, stored_f, layer_f,
                                                           layer_shape, layer_name))
    moments = {}
    for slot in ("v_row", "v_col", "v"):
      if per_layer[0][slot].shape == (1,) and factoring.slot_shapes(shape)[slot] == (1,):
        moments[slot] = per_layer[0][slot]
      else:
        moments[slot] = np.stack([p[slot] for p in per_layer], factoring.slot_axis(slot, 1))
    ms = [slots[n].get("m") for n in source]
    if all(m is not None and tuple(m.shape) == layer_shape for m in ms):
      from xltransfer.checkpoints import tree_utils  # pylint: disable=import-outside-toplevel
      momentum = tree_utils.StackedLayers(ms)
  else:  # layer `layer` of a parameter the checkpoint stores scanned
    scanned_shape = tuple(ckpt_shapes[source])
    scanned_axes = axes[:1] + ("layers",) + axes[1:]
    stored, stored_f = _read_stored_moment(slots[source], scanned_shape,
                                           rule(scanned_shape, scanned_axes, source), source)
    one = {slot: (value if value.shape == (1,) and stored_f.slot_shapes(scanned_shape)[slot]
                  == (1,) else np.take(value, layer, axis=stored_f.slot_axis(slot, 1)))
           for slot, value in stored.items()}
    moments = optimizer_lib.convert_second_moment(one, stored_f.without_dim(1), factoring, shape,
                                                  name)
    m = slots[source].get("m")
    if m is not None and tuple(m.shape) == scanned_shape:
      from xltransfer.checkpoints import tree_utils  # pylint: disable=import-outside-toplevel
      momentum = tree_utils.LayerSlice(m, layer)
  return moments, momentum


def param_moments_across_layouts(name, shape, axes, factoring, slots, slot_param_shapes,
                                 factor_rule):
  """The mapping above for any pair of layouts, also the other way (`xl-to-t5x` exports a
  trainer state as T5X's): one parameter `name` (`shape`, logical `axes`) gets its
  (v_row, v_col, v) in `factoring` and its momentum source (as `slots` hold it) or None, from
  `slots` ({name: {slot: array source}}, either layer layout, parameter shapes
  `slot_param_shapes`) stored as `factor_rule(shape, axes, name)` factors them or unfactored.
  None when `slots` hold nothing for `name`; ValueError when the moment cannot be expressed."""
  import types  # pylint: disable=import-outside-toplevel
  from xltransfer.checkpoints import t5x  # pylint: disable=import-outside-toplevel
  located = t5x.locate_param(name, slots)
  if located is None:
    return None
  return _param_optimizer_state(name, shape, axes, factoring, located, slots,
                                slot_param_shapes, types.SimpleNamespace(factor_rule=factor_rule))


def _place(leaf, sharding, abstract):
  """A restored state leaf on its devices: host arrays and lazy sources shard by shard,
  leaves still abstract (`jax.ShapeDtypeStruct`) as zeros."""
  from xltransfer.checkpoints import t5x  # pylint: disable=import-outside-toplevel
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.jit(lambda: jax.numpy.zeros(abstract.shape, abstract.dtype),
                   out_shardings=sharding)()
  if tuple(leaf.shape) != tuple(abstract.shape):
    raise CheckpointError(f"internal error: restored optimizer state of shape "
                          f"{tuple(leaf.shape)} for a leaf of shape {tuple(abstract.shape)}")
  if hasattr(leaf, "read"):
    return t5x.to_device(leaf, abstract.dtype, sharding)
  host = np.asarray(leaf, abstract.dtype)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def t5x_optimizer_state(checkpoint, model, trainer) -> Any:
  """The Adafactor state of a T5X checkpoint as this trainer's optimizer state, sharded like
  its parameters: second moments converted to this optimizer's factoring (1:1 when it is
  T5X's own, see optimizer.py), layers stacked or sliced as the model is (un)scanned, T5X's
  momentum `m` as optax's EMA (negated), every counter at the checkpoint's step."""
  optimizer = trainer.optimizer
  path = checkpoint.path
  slots = checkpoint.param_slots()
  if not slots:
    raise CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {path}: the T5X checkpoint holds no Adafactor state "
        "(nothing under param_states/) to restore; set xltransfer.train.train."
        "restore_optimizer_state = False to load its parameters with a fresh optimizer")
  abstract_params = model.abstract_params()
  is_spec = lambda x: isinstance(x, PartitionSpec)
  is_factoring = lambda x: isinstance(x, optimizer_lib.Factoring)
  names = _flat_names(abstract_params)
  shapes = [leaf.shape for leaf in jax.tree.leaves(abstract_params)]
  axes = jax.tree.leaves(model.param_logical_axes(), is_leaf=is_spec)
  factorings = jax.tree.leaves(optimizer.factorings, is_leaf=is_factoring)
  ckpt_shapes = checkpoint.shapes()
  from xltransfer.checkpoints import t5x  # pylint: disable=import-outside-toplevel
  per_slot = {"v_row": [], "v_col": [], "v": [], "m": []}
  problems, no_momentum = [], []
  for name, shape, axis_names, factoring in zip(names, shapes, axes, factorings):
    located = t5x.locate_param(name, slots)
    if located is None:
      problems.append(f"{name}: no Adafactor state in the checkpoint")
      continue
    try:
      moments, momentum = _param_optimizer_state(name, shape, axis_names, factoring, located,
                                                 slots, ckpt_shapes, optimizer)
    except ValueError as e:
      problems.append(str(e))
      continue
    for slot in ("v_row", "v_col", "v"):
      per_slot[slot].append(moments[slot])
    if momentum is None:
      no_momentum.append(name)
    per_slot["m"].append(None if momentum is None else NegatedArray(momentum))
  if problems:
    raise CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {path}: its Adafactor state does not fit this optimizer:\n  "
        + "\n  ".join(problems[:10])
        + (f"\n  ... {len(problems) - 10} more" if len(problems) > 10 else "")
        + "\nSet xltransfer.train.train.restore_optimizer_state = False to load the parameters "
        "only, with a fresh optimizer at step 0.")

  treedef = jax.tree.structure(abstract_params)
  trees = {slot: jax.tree.unflatten(treedef, per_slot[slot]) for slot in ("v_row", "v_col", "v")}
  momentum_tree = None
  if optimizer.has_momentum:
    if no_momentum:
      logging.info("T5X checkpoint %s has no momentum `m` for %d parameters (e.g. %s; it was "
                   "trained without beta1): their momentum starts at zero", path,
                   len(no_momentum), no_momentum[0])
    abstract_leaves = jax.tree.leaves(abstract_params)
    momentum_tree = jax.tree.unflatten(treedef, [
        m if m is not None else jax.ShapeDtypeStruct(a.shape, a.dtype)
        for m, a in zip(per_slot["m"], abstract_leaves)])
  elif len(no_momentum) < len(names):
    logging.info("T5X checkpoint %s carries a momentum `m`, but this Adafactor has no momentum "
                 "(Adafactor.momentum is None): it is not restored", path)
  filled = optimizer.state_with(trainer.abstract_state.opt_state, checkpoint.step,
                                trees["v_row"], trees["v_col"], trees["v"], momentum_tree)
  is_leaf = lambda x: x is not None and not isinstance(x, (tuple, dict, list))
  return jax.tree.map(_place, filled, trainer.state_shardings.opt_state,
                      trainer.abstract_state.opt_state, is_leaf=is_leaf)


def load_initial_state(path: str, model, trainer, restore_optimizer_state: bool = True,
                       total_steps: Optional[int] = None) -> InitialState:
  """The train state from INITIAL_CHECKPOINT_PATH.

  A T5X checkpoint, with `restore_optimizer_state`, gives what T5X's fine-tuning restores
  (`utils.RestoreCheckpointConfig(mode='specific')`): the parameters, the Adafactor state and
  the step, so the run continues the checkpoint's step count, and TRAIN_STEPS (`total_steps`)
  is the step to stop at, pretraining included (T5X runs/finetune.gin: 1,000,000 pretraining
  steps + 20,000 = 1,020,000); a `total_steps` not above the step is a ConfigError, raised
  before any array is read. Anything else (or `restore_optimizer_state=False`) gives the
  parameters with a fresh optimizer at step 0.
  """
  if not path.startswith("gs://") and not os.path.exists(path):
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path}: no such file or directory")
  if not (restore_optimizer_state and _is_t5x_initial_checkpoint(path)):
    params, description = load_initial_params(path, model, trainer.state_shardings.params)
    if _is_t5x_initial_checkpoint(path):
      restored = ("parameters only (xltransfer.train.train.restore_optimizer_state = False): "
                  "its Adafactor state and step are not restored; a fresh optimizer starts at "
                  "step 0 and TRAIN_STEPS counts fine-tuning steps")
    else:
      restored = ("parameters only (it holds no T5X optimizer state); a fresh optimizer "
                  "starts at step 0")
    return InitialState(trainer.state_from_params(params), description, restored)

  read = _importer("xltransfer.checkpoints.t5x", "read_t5x_checkpoint", path, "T5X")
  checkpoint = read(path)
  description = f"T5X checkpoint {path}"
  step = checkpoint.step
  if step is None:
    raise CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {path}: the T5X checkpoint has no state/step to continue "
        "from; set xltransfer.train.train.restore_optimizer_state = False to load its "
        "parameters with a fresh optimizer at step 0")
  if total_steps is not None and total_steps <= step:
    raise ConfigError(
        f"TRAIN_STEPS {total_steps} is not beyond step {step} of INITIAL_CHECKPOINT_PATH {path}. "
        "Fine-tuning from a T5X checkpoint continues its step count, as in T5X, so TRAIN_STEPS "
        f"includes the pretraining steps: for N fine-tuning steps set TRAIN_STEPS = {step} + N. "
        "Or set xltransfer.train.train.restore_optimizer_state = False to start a fresh "
        "optimizer at step 0 (TRAIN_STEPS then counts fine-tuning steps).")
  drop = tuple(model.dropped_subtrees)
  if drop:
    logging.info("the %s model holds no %s: not read from %s", model.kind, " or ".join(drop),
                 path)
  params = checkpoint.load_params(model.abstract_params(), trainer.state_shardings.params,
                                  drop_subtrees=drop)
  opt_state = t5x_optimizer_state(checkpoint, model, trainer)
  restored = (f"parameters, Adafactor state and step {step}, as T5X fine-tuning restores them; "
              "training continues from that step")
  return InitialState(trainer.state_from_restored(params, opt_state, step), description,
                      restored)
