"""Training and validation input: seqio datasets as global, sharded jax arrays.

Each host reads its own part of every global batch and the global arrays are assembled with
`jax.make_array_from_process_local_data`. Two ways to split the data between hosts:

  "source"      seqio `ShardInfo`: each host reads and preprocesses only its shard of the
                source (T5X's default; scales to pods). The data then depends on the number
                of hosts.
  "host_slice"  every host runs the whole pipeline and keeps its rows of each global batch:
                the global batches are the same for any number of hosts, at the cost of
                preprocessing everything on every host (fine for small or cached tasks).

The position (number of global batches consumed) is saved with each checkpoint; on resume the
pipeline skips that many batches, so a resumed run sees exactly the data of an uninterrupted
one (the pipeline is deterministic: fixed shuffle seed, deterministic tf.data).
"""
import difflib
import logging
from typing import Dict, Iterator, Mapping, Optional

import gin
import jax
import numpy as np

from xltransfer.errors import ConfigError, UserError
from xltransfer.train import feature_converters

# seqio and TensorFlow take seconds to import; DatasetConfig is registered (and checked) while
# a config is parsed, so they are imported by the functions that read data.

SHARDING_MODES = ("source", "host_slice")


def _require_registered(name: str):
  import seqio  # pylint: disable=import-outside-toplevel
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(name, known, n=5)
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  raise ConfigError(
      f"MIXTURE_OR_TASK_NAME {name!r} is not a registered seqio task or mixture{hint} "
      f"({len(known)} are registered; import the module that registers yours with an `import` "
      "line in a gin file)")


@gin.configurable(module="xltransfer.train")
class DatasetConfig:
  """What to read: T5X's `utils.DatasetConfig` fields that a training run needs.

  `feature_converter` names the model's batch layout (`xltransfer.train.feature_converters`):
  "enc_dec" for the seq2seq model, "dual_encoder" (unpacked query/candidate pairs) for the
  dual encoder.
  """

  def __init__(self, mixture_or_task_name: str = gin.REQUIRED,
               task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
               split: str = "train", batch_size: int = gin.REQUIRED, shuffle: bool = True,
               seed: Optional[int] = 0, pack: bool = True, use_cached: bool = False,
               sharding: str = "source",
               feature_converter: str = feature_converters.ENC_DEC):
    if sharding not in SHARDING_MODES:
      raise ConfigError(f"DatasetConfig.sharding {sharding!r}: use one of {SHARDING_MODES}")
    if not isinstance(batch_size, int) or batch_size <= 0:
      raise ConfigError(f"BATCH_SIZE must be a positive integer, got {batch_size!r}")
    if shuffle and seed is None:
      raise ConfigError("DatasetConfig: a shuffled training set needs a fixed seed to be "
                        "resumable")
    feature_converters.check(feature_converter, task_feature_lengths, pack)
    self.mixture_or_task_name = mixture_or_task_name
    self.task_feature_lengths = dict(task_feature_lengths)
    self.split = split
    self.batch_size = int(batch_size)
    self.shuffle = shuffle
    self.seed = seed
    self.pack = pack
    self.use_cached = use_cached
    self.sharding = sharding
    self.feature_converter = feature_converter

  def replace(self, **changes) -> "DatasetConfig":
    fields = dict(vars(self), **changes)
    return DatasetConfig(**fields)


def host_dataset(config: DatasetConfig, shard_index: int, num_shards: int, per_host_batch: int,
                 num_epochs: Optional[int] = None) -> "tf.data.Dataset":
  """This host's batches (numpy-convertible dicts) of the model's features."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  _require_registered(config.mixture_or_task_name)
  options = dict(
      mixture_or_task_name=config.mixture_or_task_name,
      task_feature_lengths=config.task_feature_lengths,
      dataset_split=config.split, shuffle=config.shuffle, num_epochs=num_epochs,
      use_cached=config.use_cached, seed=config.seed,
      feature_converter=feature_converters.make(config.feature_converter, config.pack))
  try:
    if config.sharding == "source":
      ds = seqio.get_dataset(shard_info=seqio.ShardInfo(shard_index, num_shards), **options)
      ds = ds.batch(per_host_batch, drop_remainder=num_epochs is None)
    else:
      ds = seqio.get_dataset(**options)
      ds = ds.batch(per_host_batch * num_shards, drop_remainder=num_epochs is None)
      start = shard_index * per_host_batch
      ds = ds.map(lambda b: {k: v[start:start + per_host_batch] for k, v in b.items()})
  except UserError:
    raise  # A data error (DataFormatError is a ValueError too) already names its file and line.
  except ValueError as e:
    raise ConfigError(f"cannot read {config.mixture_or_task_name!r} split {config.split!r} "
                      f"with lengths {config.task_feature_lengths}: {e}") from e
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class TrainInput:
  """An endless iterator of global batches with a resumable position."""

  def __init__(self, config: DatasetConfig, partitioner, position: int = 0):
    self.config = config
    self.partitioner = partitioner
    shard_index, num_shards, per_host = partitioner.data_shard(config.batch_size)
    self.per_host_batch = per_host
    ds = host_dataset(config, shard_index, num_shards, per_host, num_epochs=None)
    if position:
      logging.info("input: skipping %d batches already consumed before the checkpoint", position)
      ds = ds.skip(position)
    self._iterator = ds.as_numpy_iterator()
    self.position = position
    self.last_host_batch: Optional[Dict[str, np.ndarray]] = None

  def __iter__(self) -> Iterator[Dict[str, jax.Array]]:
    return self

  def __next__(self) -> Dict[str, jax.Array]:
    try:
      host_batch = next(self._iterator)
    except StopIteration:
      # The training stream repeats forever, so it ends only when there is nothing to repeat.
      raise UserError(
          f"MIXTURE_OR_TASK_NAME {self.config.mixture_or_task_name!r} split "
          f"{self.config.split!r} gave no training batch: its data is empty, or its "
          f"preprocessors dropped every example{_data_location(self.config)}") from None
    self.position += 1
    self.last_host_batch = host_batch
    return to_global_batch(host_batch, self.partitioner, self.config.batch_size)


def _data_location(config: DatasetConfig) -> str:
  """Where an xltransfer task reads its data (as `xltransfer tasks list` shows it), if known."""
  from xltransfer.tasks import catalog  # pylint: disable=import-outside-toplevel
  entry = catalog.ENTRIES.get(config.mixture_or_task_name)
  return f" (data: {entry.data})" if entry is not None and entry.data else ""


def to_global_batch(host_batch: Mapping[str, np.ndarray], partitioner,
                    global_batch_size: int) -> Dict[str, jax.Array]:
  out = {}
  for name, value in host_batch.items():
    sharding = partitioner.batch_sharding(value.ndim)
    global_shape = (global_batch_size,) + value.shape[1:]
    out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


def eval_host_batches(config: DatasetConfig, partitioner, max_batches: Optional[int] = None):
  """The validation split as this host's full-size batches (the last one zero-padded).

  Hosts may hold different numbers of batches; every host gets the same count (the maximum,
  padded with all-zero batches whose loss weights are zero) so the collective steps line up.
  """
  shard_index, num_shards, per_host = partitioner.data_shard(config.batch_size)
  ds = host_dataset(config, shard_index, num_shards, per_host, num_epochs=1)
  batches = []
  for batch in ds.as_numpy_iterator():
    rows = next(iter(batch.values())).shape[0]
    if rows < per_host:
      batch = {k: np.concatenate([v, np.zeros((per_host - rows,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    batches.append(batch)
    if max_batches is not None and len(batches) >= max_batches:
      break
  count = len(batches)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    count = int(np.max(multihost_utils.process_allgather(np.int32(count))))
  if not batches and count:
    raise ConfigError(f"validation split {config.split!r} of {config.mixture_or_task_name!r} is "
                      "empty on this host but not on others; use sharding='host_slice'")
  while len(batches) < count:
    batches.append({k: np.zeros_like(v) for k, v in batches[0].items()})
  return batches
