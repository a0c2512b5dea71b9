"""Trainer checkpoints: orbax CheckpointManager (async, save period, keep N) and start-up logic.

A run directory (MODEL_DIR) holds `checkpoint_<step>/` with five items:
  params     the parameter tree (T5X names)        opt_state  the optimizer state
  progress   JSON: step, input position            run        JSON: the run's identity
  digests    JSON: a digest of every array of params and opt_state, checked on restore
             (xltransfer/checkpoints/digests.py); a damaged checkpoint is refused, or skipped
             for the newest earlier one that verifies with `fallback_to_verified_checkpoint`
At start the run resumes from MODEL_DIR's latest checkpoint; only when there is none does it
start from INITIAL_CHECKPOINT_PATH (initial_state.py; checkpoints/loading.py reads every
format). A MODEL_DIR whose
checkpoints come from a different model kind (seq2seq, dual_encoder) or network is refused, so
a stale directory can never silently shadow the intended starting point; one trained with
other settings (task, data, schedule, optimizer, seeds: `run_identity`) is refused with the
list of changes unless the run explicitly allows them (`check_identity`).
"""
import dataclasses
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from xltransfer.checkpoints import digests
from xltransfer.checkpoints.loading import STEP_PREFIX, with_shardings
from xltransfer.errors import CheckpointError
from xltransfer.train import optimizer as optimizer_lib
from xltransfer.train.state import TrainState

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
    target = with_shardings(abstract_state, shardings)
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
