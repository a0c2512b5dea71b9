"""A training run's gin config, read the way `xltransfer train` reads it, for planning.

The gin files are parsed as the trainer parses them (gin_utils.parse_config). Macros that only name where a run
reads and writes (MODEL_DIR, the task, the checkpoint, the step count) do not change what is
compiled, so those left `%gin.REQUIRED` get placeholders instead of failing. The devices are
bound into `create_mesh` before any configurable is evaluated, so a partitioner built by gin
(`train.partitioner = @create_partitioner()`) lands on the target's devices too.
"""
import dataclasses
import inspect
from typing import Any, Dict, Optional, Sequence

import gin

from xltransfer import gin_utils
from xltransfer.errors import ConfigError

# Placeholders for required macros that do not affect the compiled program.
PLACEHOLDERS = {
    "MODEL_DIR": "'/tmp/xltransfer_plan'",
    "MIXTURE_OR_TASK_NAME": "'xltransfer_plan_placeholder'",
    "TRAIN_STEPS": "1",
    "INITIAL_CHECKPOINT_PATH": "None",
    "CHECKPOINT_PATH": "None",
    "EVAL_OUTPUT_DIR": "None",
}


@dataclasses.dataclass
class RunConfig:
  """What the compiled steps depend on."""
  model: Any
  batch_size: int
  task_feature_lengths: Dict[str, int]
  pack: bool
  # DatasetConfig.feature_converter: the batch layout the trainer reads ("enc_dec", ...).
  feature_converter: str
  num_microbatches: int
  random_seed: int
  learning_rate: Optional[Any]
  optimizer: Optional[Any]
  partitioner: Optional[Any]
  inference_batch_size: int
  gin_files: Sequence[str]


def _required_macros():
  config = gin.config._CONFIG  # pylint: disable=protected-access
  names = []
  for (scope, selector), parameters in config.items():
    value = parameters.get("value")
    if selector == "gin.macro" and isinstance(value, gin.config.ConfigurableReference) and (
        value.scoped_selector.startswith("gin.REQUIRED")):
      names.append(scope)
  return names


def parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str],
          modules: Sequence[str] = ()):
  """Parses the config like `xltransfer train` (`modules`: its --module); returns the resolved
  gin file paths."""
  gin_utils.import_modules(["xltransfer.partitioning", "xltransfer.model.factory",
                            "xltransfer.train.run"])
  gin.clear_config()
  try:
    return gin_utils.parse_config(gin_files, bindings, search_paths, modules)
  except ConfigError:
    required = [name for name in _required_macros() if name in PLACEHOLDERS]
    if not required:
      raise
  placeholders = [f"{name} = {PLACEHOLDERS[name]}" for name in required]
  gin.clear_config()
  return gin_utils.parse_config(gin_files, placeholders + list(bindings), search_paths, modules)


class _DeviceList(list):
  """Devices as a gin binding: gin deep-copies bound values, and devices cannot be copied."""

  def __deepcopy__(self, memo):
    return self


def bind_devices(devices):
  """Every mesh that gin builds from now on uses `devices` (the target's)."""
  with gin.unlock_config():
    gin.bind_parameter("xltransfer.partitioning.create_mesh.devices", _DeviceList(devices))


def _defaults(fn) -> Dict[str, Any]:
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def load(gin_files: Sequence[str], inference_batch_size: Optional[int] = None) -> RunConfig:
  """The `xltransfer.train.train` bindings, evaluated (after `parse` and `bind_devices`)."""
  from xltransfer.train import run  # pylint: disable=import-outside-toplevel
  bound = gin.get_bindings("xltransfer.train.train")
  values = dict(_defaults(run.train), **bound)
  for name in ("model", "train_dataset"):
    if name not in bound or values[name] is gin.REQUIRED:
      raise ConfigError(f"the gin config ({', '.join(gin_files)}) does not bind "
                        f"xltransfer.train.train.{name}; plan compiles a training run: include "
                        "a model file (models/*.gin) and a run file (runs/finetune.gin, "
                        "scale/*.gin)")
  dataset = values["train_dataset"]
  # DatasetConfig has checked the lengths against its feature converter (inputs, targets).
  eval_dataset = values.get("eval_dataset")
  return RunConfig(
      model=values["model"], batch_size=dataset.batch_size,
      task_feature_lengths=dict(dataset.task_feature_lengths), pack=dataset.pack,
      feature_converter=dataset.feature_converter,
      num_microbatches=int(values["num_microbatches"]),
      random_seed=int(values["random_seed"]), learning_rate=values.get("learning_rate"),
      optimizer=values.get("optimizer"), partitioner=values.get("partitioner"),
      inference_batch_size=int(inference_batch_size or (eval_dataset.batch_size if eval_dataset
                                                        else dataset.batch_size)),
      gin_files=list(gin_files))
