"""Reading a trainer run's parameters and model config, for export (`xltransfer convert`).

A trainer MODEL_DIR holds `checkpoint_<step>/` directories (see `xltransfer.train.
checkpointing`); each records the run's identity (`run/`: model kind and model config) beside
its `params/`. `load_trained_params` takes the MODEL_DIR (its latest step) or one
`checkpoint_<step>` and returns the parameters with the config taken from the run itself, so
the exported network is the one that was trained. `load_trained_optimizer_state` reads the
same step's Adafactor state (`opt_state/`), for `xl-to-t5x`. Only the seq2seq (mT5) kind can
be exported to HF or T5X: a dual encoder holds no decoder.
"""
import dataclasses
import logging
import os
import re
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from xltransfer.checkpoints import loading
from xltransfer.errors import CheckpointError
from xltransfer.model.config import MT5Config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.train import checkpointing
from xltransfer.train import optimizer

# What `checkpointing.run_identity` leaves out of the recorded config: execution choices that
# may change between a run and its resumption. Export uses MT5Config's defaults for them.
_UNRECORDED_FIELDS = ("dropout_rate", "remat_policy", "dtype")
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
EXPORTABLE_KIND = "seq2seq"


@dataclasses.dataclass
class TrainedParams:
  params: Any  # nested dict of jax arrays, T5X names, the run's layer layout
  config: MT5Config
  step: int
  step_dir: str  # the checkpoint_<step> directory read


def is_step_dir(path: str) -> bool:
  """A trainer checkpoint step: `checkpoint_<step>/` with `params/` and `run/` items."""
  return bool(_STEP_DIR.match(os.path.basename(os.path.normpath(path)))) and all(
      os.path.isdir(os.path.join(path, item)) for item in ("params", "run"))


def locate_step(path: str) -> Tuple[str, int]:
  """(model_dir, step) of a `checkpoint_<step>` directory, or of a MODEL_DIR's latest step."""

  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such checkpoint directory")
  if is_step_dir(path):
    return os.path.dirname(path), int(_STEP_DIR.match(os.path.basename(path)).group(1))
  step = None
  if any(_STEP_DIR.match(name) for name in os.listdir(path)):
    manager = checkpointing.CheckpointManager(path, async_save=False)
    try:
      step = manager.latest_step()  # complete steps only, as the trainer resumes from
    finally:
      manager.close()
  if step is None:
    raise CheckpointError(
        f"{path}: no checkpoint to read: it is neither an `xltransfer convert` output "
        "(config.json + params/) nor a trainer MODEL_DIR with a complete checkpoint_<step>/ "
        "(a run saves its first one after CheckpointManager.period steps, and at its end)")
  return path, step


def read_run_config(model_dir: str, step: int) -> MT5Config:
  """The model config a trainer checkpoint recorded; CheckpointError for a non-seq2seq run."""

  manager = checkpointing.CheckpointManager(model_dir, async_save=False)
  try:
    identity = manager.read_identity(step)
    step_dir = manager.step_dir(step)
  finally:
    manager.close()
  where = os.path.join(step_dir, "run")
  kind = identity.get(checkpointing.MODEL_KIND_KEY, checkpointing.UNRECORDED_MODEL_KIND)
  if kind != EXPORTABLE_KIND:
    raise CheckpointError(
        f"{step_dir}: a {kind} run's checkpoint; only {EXPORTABLE_KIND} (mT5 encoder-decoder) "
        f"runs can be exported to HF or T5X (a dual encoder has no decoder)")
  fields = identity.get("model_config")
  if not isinstance(fields, dict):
    raise CheckpointError(f"{where}: the run identity records no model_config")
  known = {f.name for f in dataclasses.fields(MT5Config)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise CheckpointError(f"{where}: unknown model_config keys {unknown}")
  missing = sorted(known - set(fields) - set(_UNRECORDED_FIELDS))
  if missing:
    raise CheckpointError(f"{where}: model_config lacks {missing}")
  return MT5Config(**fields)


def load_trained_params(path: str, device: Optional[jax.Device] = None) -> TrainedParams:
  """Reads the parameters of a trainer MODEL_DIR (latest step) or `checkpoint_<step>`.

  The config comes from the checkpoint's recorded run identity; the parameters are read by
  the trainer's own loader (`loading.load_initial_params`) onto one device.
  """

  model_dir, step = locate_step(path)
  config = read_run_config(model_dir, step)
  step_dir = os.path.join(model_dir, f"{checkpointing.STEP_PREFIX}_{step}")
  model = EncoderDecoderModel(config)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  shardings = jax.tree_util.tree_map(lambda _: sharding, model.abstract_params())
  params, _ = loading.load_initial_params(step_dir, model, shardings)
  logging.info("read step %d of trainer run %s", step, model_dir)
  return TrainedParams(params=params, config=config, step=step, step_dir=step_dir)


@dataclasses.dataclass
class TrainedOptimizerState:
  """A trainer checkpoint's Adafactor state, flat parameter names of the run's layer layout."""
  step_dir: str  # the checkpoint_<step> directory read
  step: int  # the second-moment counter (T5X's `state.step`)
  v_row: Dict[str, np.ndarray]  # per parameter; (1,) where the slot is unused
  v_col: Dict[str, np.ndarray]
  v: Dict[str, np.ndarray]
  # optax's momentum EMA (the negative of T5X's `m`), None when the run has no momentum.
  momentum: Optional[Dict[str, np.ndarray]]


def _is_state(node, fields) -> bool:
  return isinstance(node, dict) and set(node) == set(fields)


def load_trained_optimizer_state(step_dir: str) -> TrainedOptimizerState:
  """Reads the Adafactor state of a `checkpoint_<step>` onto the host.

  The trainer's state is optax's chain (`optimizer.Adafactor.create`); its second moments are
  the `FactoredRmsState` member, its momentum the `EmaState` one. CheckpointError when the
  checkpoint holds no such state, or stores it in the layout of xltransfer before it
  followed T5X's (which dimension v_row keeps cannot be told from the shapes there).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from xltransfer.checkpoints import tree_utils  # pylint: disable=import-outside-toplevel

  model_dir = os.path.dirname(os.path.abspath(step_dir))
  step = int(_STEP_DIR.match(os.path.basename(os.path.abspath(step_dir))).group(1))
  manager = checkpointing.CheckpointManager(model_dir, async_save=False)
  try:
    layout = manager.read_progress(step).get(checkpointing.LAYOUT_KEY)
  finally:
    manager.close()
  if layout != optimizer.STATE_LAYOUT:
    raise CheckpointError(
        f"{step_dir}: its Adafactor state is stored in layout {layout!r}, not T5X's "
        f"({optimizer.STATE_LAYOUT!r}: written by xltransfer before it followed T5X), so it "
        "cannot be exported; pass --zero_optimizer_state (or --no_optimizer_state)")
  path = os.path.join(step_dir, "opt_state")
  checkpointer = ocp.StandardCheckpointer()
  try:
    metadata = checkpointer.metadata(path).item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata, is_leaf=lambda x: hasattr(x, "shape"))
    restored = checkpointer.restore(path, target)
  except Exception as e:  # orbax raises several types for a damaged or foreign item.
    raise CheckpointError(f"{path}: cannot read the optimizer state ({e})") from e
  finally:
    checkpointer.close()
  members = restored if isinstance(restored, (list, tuple)) else [restored]
  moments = [m for m in members if _is_state(m, optimizer.FactoredRmsState._fields)]
  emas = [m for m in members if _is_state(m, optax.EmaState._fields)]
  if len(moments) != 1 or len(emas) > 1:
    raise CheckpointError(
        f"{path}: not the Adafactor state of xltransfer's trainer (expected one member with "
        f"{'/'.join(optimizer.FactoredRmsState._fields)} and at most one with "
        f"{'/'.join(optax.EmaState._fields)}); pass --zero_optimizer_state (or "
        "--no_optimizer_state) to export the parameters without it")
  flat = lambda tree: {n: np.asarray(v) for n, v in tree_utils.flatten_tree(tree).items()}
  (state,) = moments
  return TrainedOptimizerState(
      step_dir=os.path.abspath(step_dir), step=int(np.asarray(state["count"])),
      v_row=flat(state["v_row"]),
      v_col=flat(state["v_col"]), v=flat(state["v"]),
      momentum=flat(emas[0]["ema"]) if emas else None)
