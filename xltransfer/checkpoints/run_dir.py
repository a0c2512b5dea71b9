"""Reading a trainer run's parameters and model config, for export (`xltransfer convert`).

A trainer MODEL_DIR holds `checkpoint_<step>/` directories (see `xltransfer.train.
checkpointing`); each records the run's identity (`run/`: model kind and model config) beside
its `params/`. `load_trained_params` takes the MODEL_DIR (its latest step) or one
`checkpoint_<step>` and returns the parameters with the config taken from the run itself, so
the exported network is the one that was trained. Only the seq2seq (mT5) kind can be exported
to HF or T5X: a dual encoder holds no decoder.
"""
import dataclasses
import logging
import os
import re
from typing import Any, Optional, Tuple

import jax

from xltransfer.errors import CheckpointError
from xltransfer.model.config import MT5Config

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
  from xltransfer.train import checkpointing  # pylint: disable=import-outside-toplevel

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
  from xltransfer.train import checkpointing  # pylint: disable=import-outside-toplevel

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
  the trainer's own loader (`checkpointing.load_initial_params`) onto one device.
  """
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  from xltransfer.train import checkpointing  # pylint: disable=import-outside-toplevel

  model_dir, step = locate_step(path)
  config = read_run_config(model_dir, step)
  step_dir = os.path.join(model_dir, f"{checkpointing.STEP_PREFIX}_{step}")
  model = EncoderDecoderModel(config)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  shardings = jax.tree_util.tree_map(lambda _: sharding, model.abstract_params())
  params, _ = checkpointing.load_initial_params(step_dir, model, shardings)
  logging.info("read step %d of trainer run %s", step, model_dir)
  return TrainedParams(params=params, config=config, step=step, step_dir=step_dir)
