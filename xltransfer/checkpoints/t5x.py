"""Imports T5X checkpoints (e.g. the released mT5 ones) as xltransfer parameters.

Three on-disk formats are read, detected from the files present:
  * legacy msgpack, arrays inline: one `checkpoint` file holding
    `{'version', 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`;
  * legacy msgpack + tensorstore: the same file, with a tensorstore spec in place of each large
    array whose data is in a zarr directory next to it (`target.encoder.layers_0....kernel/`).
    Paths in the specs are relative to the checkpoint directory, which may be on `gs://`
    (this is how `gs://t5-data/pretrained_models/t5x/mt5_*/checkpoint_1000000` is stored);
  * orbax (newer T5X): a PyTree checkpoint of `{'target': params, 'state': {...}}`, either the
    step directory's `state/` item or that item directory itself.

Parameters are read array by array straight into their target sharding: each device's shard is
read from storage on its own (`jax.make_array_from_callback`), so a 13B checkpoint never needs
a full host copy. `load_params` reads the parameters only; the Adafactor state
(`param_states/<param>/{v_row,v_col,v,m}`) and the step are exposed by `param_slots`,
`locate_param` and `step` for the trainer, which restores them (xltransfer/train/checkpointing.py
`load_initial_state`), as T5X's fine-tuning does.
"""
import dataclasses
import functools
import logging
import os
import posixpath
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import tensorstore as ts

from xltransfer.checkpoints import tree_utils
from xltransfer.errors import CheckpointError

logger = logging.getLogger(__name__)

_CHECKPOINT_FILE = "checkpoint"
# Files that only an orbax checkpoint (item) directory has.
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA")
# T5X's orbax CheckpointManager saves the train state as the item named `state`.
_ORBAX_STATE_ITEM = "state"
# Where the parameters and the optimizer state sit, per format (legacy first).
_PARAM_PREFIXES = ("optimizer/target/", "target/")
_STATE_PREFIXES = ("optimizer/state/", "state/")
# T5X `adafactor._AdafactorParamState`: the per-parameter slots under `param_states/<param>/`.
ADAFACTOR_SLOTS = ("v_row", "v_col", "v", "m")
_UNSCANNED_LAYER = re.compile(r"layers_(\d+)")
_SCANNED_LAYER = "layers"
# T5X before version 3 wrote bfloat16 arrays to tensorstore as their uint16 bit patterns.
_NATIVE_BFLOAT16_VERSION = 3


# ----------------------------------------------------------------------------- file access


def _is_url(path: str) -> bool:
  return "://" in path


@functools.lru_cache(maxsize=None)
def _gfile():
  # Imported only for remote paths: TensorFlow is slow to import and local paths need none.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _exists(path: str) -> bool:
  return _gfile().exists(path) if _is_url(path) else os.path.exists(path)


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if _is_url(path) else os.path.isdir(path)


def _join(directory: str, name: str) -> str:
  return posixpath.join(directory, name) if _is_url(directory) else os.path.join(directory, name)


def _read_bytes(path: str) -> bytes:
  try:
    if _is_url(path):
      with _gfile().GFile(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot read T5X checkpoint file {path}: {e}") from e


def _is_orbax_dir(directory: str) -> bool:
  return any(_exists(_join(directory, marker)) for marker in _ORBAX_MARKERS)


def _locate(path: str) -> Tuple[str, str, Optional[str]]:
  """Returns (format, directory, msgpack file) for a checkpoint directory or its file."""
  path = str(path)
  path = path.rstrip("/") if len(path) > 1 else path
  if not _exists(path):
    raise CheckpointError(f"T5X checkpoint not found: {path}")
  if not _isdir(path):
    directory = posixpath.dirname(path) if _is_url(path) else os.path.dirname(path) or "."
    if _is_orbax_dir(directory):
      return "orbax", directory, None
    return "legacy", directory, path
  if _is_orbax_dir(path):
    return "orbax", path, None
  if _exists(_join(path, _CHECKPOINT_FILE)):
    return "legacy", path, _join(path, _CHECKPOINT_FILE)
  state_item = _join(path, _ORBAX_STATE_ITEM)
  if _isdir(state_item) and _is_orbax_dir(state_item):
    return "orbax", state_item, None
  raise CheckpointError(
      f"{path} is not a T5X checkpoint: it has no `{_CHECKPOINT_FILE}` file (legacy format) "
      f"and no orbax metadata ({', '.join(_ORBAX_MARKERS)}) in it or in `{_ORBAX_STATE_ITEM}/`")


# ----------------------------------------------------------------------------- stored arrays


@dataclasses.dataclass
class _InlineArray:
  """An array held in the msgpack file itself."""
  value: np.ndarray

  @property
  def shape(self):
    return tuple(self.value.shape)

  @property
  def dtype(self):
    return self.value.dtype

  def read(self, index=None) -> np.ndarray:
    return np.asarray(self.value[tree_utils.full_index(index, self.shape)])


class _TensorStoreArray:
  """An array in a tensorstore (zarr) directory, opened on first read."""

  def __init__(self, name: str, spec: Dict[str, Any], shape, dtype, checkpoint: str,
               assume_metadata: bool = False, context=None, bits_are_bfloat16: bool = False):
    self.name = name
    self.spec = spec
    self.shape = tuple(int(n) for n in shape)
    self._stored_dtype = np.dtype(dtype)
    self._checkpoint = checkpoint
    self._assume_metadata = assume_metadata
    self._context = context
    self._bits_are_bfloat16 = bits_are_bfloat16
    self._store = None

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(jax.numpy.bfloat16) if self._bits_are_bfloat16 else self._stored_dtype

  def _open(self):
    if self._store is None:
      kwargs = {"open": True, "read": True}
      if self._assume_metadata:
        kwargs["assume_metadata"] = True
      if self._context is not None:
        kwargs["context"] = self._context
      try:
        self._store = ts.open(self.spec, **kwargs).result()
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(
            f"T5X checkpoint {self._checkpoint}: cannot open the array {self.name} "
            f"(tensorstore spec {self.spec}): {e}") from e
    return self._store

  def read(self, index=None) -> np.ndarray:
    index = tree_utils.full_index(index, self.shape)
    store = self._open()
    try:
      value = np.asarray(store[index].read().result())
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"T5X checkpoint {self._checkpoint}: cannot read {self.name} {index}: {e}") from e
    if self._bits_are_bfloat16:
      value = value.view(jax.numpy.bfloat16)
    return value


def _is_tensorstore_spec(value) -> bool:
  return (isinstance(value, Mapping) and isinstance(value.get("driver"), str)
          and ("kvstore" in value or "path" in value))


def legacy_tensorstore_spec(stored: Mapping[str, Any], checkpoint_dir: str) -> Dict[str, Any]:
  """The readable spec for a spec entry of a legacy T5X `checkpoint` file.

  T5X stores each array's path relative to the checkpoint directory (and a dummy bucket, or
  the `gfile` driver, in the kvstore) so that checkpoints can be moved; the directory being
  read supplies the real location: `file` for a local directory, `gcs` for `gs://bucket/...`.
  """
  spec = {key: value for key, value in stored.items() if key not in ("kvstore", "path")}
  kvstore = stored.get("kvstore") or {}
  # tensorstore < 0.1.14 kept the path at the top level of the spec.
  relative = kvstore.get("path", stored.get("path")) if isinstance(kvstore, Mapping) else None
  if not relative:
    raise CheckpointError(
        f"T5X checkpoint {checkpoint_dir}: tensorstore spec without a path: {dict(stored)}")
  bucket_path = re.fullmatch(r"gs://([^/]+)/?(.*)", checkpoint_dir)
  if bucket_path:
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket_path.group(1),
                       "path": posixpath.join(bucket_path.group(2), relative)}
  elif _is_url(checkpoint_dir):
    raise CheckpointError(
        f"T5X checkpoint {checkpoint_dir}: tensorstore-backed arrays can be read from a local "
        f"directory or gs:// only")
  else:
    spec["kvstore"] = {"driver": "file",
                       "path": os.path.join(os.path.abspath(checkpoint_dir), relative)}
  return spec


def _read_legacy(directory: str, file_path: str):
  """Returns ({flat name: array source}, version) for a legacy msgpack checkpoint."""
  from flax import serialization  # pylint: disable=g-import-not-at-top

  raw = _read_bytes(file_path)
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{file_path} is not a readable T5X msgpack checkpoint: {e}") from e
  if not isinstance(contents, Mapping):
    raise CheckpointError(
        f"{file_path} is not a T5X checkpoint: expected a tree of arrays, "
        f"got {type(contents).__name__}")
  version = int(contents.get("version", _NATIVE_BFLOAT16_VERSION))
  context = ts.Context()  # One cache and concurrency budget for all arrays of the checkpoint.
  arrays = {}
  for name, value in tree_utils.flatten_tree(
      {k: v for k, v in contents.items() if k != "version"},
      is_leaf=_is_tensorstore_spec).items():
    if _is_tensorstore_spec(value):
      spec = legacy_tensorstore_spec(value, directory)
      metadata = spec.get("metadata") or {}
      dtype = spec.get("dtype") or metadata.get("dtype")
      if "shape" not in metadata or not dtype:
        raise CheckpointError(
            f"{file_path}: the tensorstore spec of {name} lacks shape or dtype: {dict(value)}")
      dtype = jax.numpy.dtype(dtype)
      # T5X writes no `.zarray` files; the spec's metadata is what the arrays were written with.
      complete = "chunks" in metadata
      bits_are_bfloat16 = (version < _NATIVE_BFLOAT16_VERSION and dtype == np.uint16
                           and name.startswith(_PARAM_PREFIXES))
      arrays[name] = _TensorStoreArray(name, spec, metadata["shape"], dtype, directory,
                                       assume_metadata=complete, context=context,
                                       bits_are_bfloat16=bits_are_bfloat16)
    elif isinstance(value, (np.ndarray, np.generic, int, float, bool)):
      arrays[name] = _InlineArray(np.asarray(value))
  return arrays, version


def _read_orbax(directory: str):
  """Returns {flat name: array source} for an orbax PyTree checkpoint directory."""
  # pylint: disable=g-import-not-at-top
  from etils import epath
  import orbax.checkpoint as ocp
  # pylint: enable=g-import-not-at-top

  try:
    metadata = ocp.PyTreeCheckpointer().metadata(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{directory} is not a readable orbax checkpoint: {e}") from e
  item = getattr(metadata, "item_metadata", metadata)
  tree = getattr(item, "tree", item)
  use_zarr3 = bool(getattr(item, "use_zarr3", False))
  parent = epath.Path(directory)
  use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(parent)
  context = ocp.type_handlers.get_ts_context(use_ocdbt=use_ocdbt)
  arrays = {}
  for name, leaf in tree_utils.flatten_tree(tree).items():
    if not all(hasattr(leaf, attr) for attr in ("name", "shape", "dtype")) or leaf.dtype is None:
      continue  # Not an array (e.g. a string or an empty node).
    info = ocp.type_handlers.ParamInfo(
        name=leaf.name, parent_dir=parent, is_ocdbt_checkpoint=use_ocdbt, use_zarr3=use_zarr3,
        ts_context=context)
    spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=use_ocdbt)
    arrays[name] = _TensorStoreArray(name, spec, leaf.shape, leaf.dtype, directory,
                                     context=context)
  return arrays


# ----------------------------------------------------------------------------- checkpoint


def _unbox(leaf):
  # Flax `nn.LogicalPartitioned` / `nn.Partitioned` leaves from `jax.eval_shape(init)`.
  return leaf.unbox() if hasattr(leaf, "unbox") else leaf


def _is_sharding(value) -> bool:
  return isinstance(value, jax.sharding.Sharding)


class T5XCheckpoint:
  """A T5X checkpoint opened for reading: names, shapes and step now, arrays on demand."""

  def __init__(self, path: str, format_name: str, arrays: Dict[str, Any], version=None):
    self.path = path  # As the user gave it, for messages.
    self.format = format_name
    self.version = version
    self._arrays = arrays
    self._param_prefix = next(
        (p for p in _PARAM_PREFIXES if any(n.startswith(p) for n in arrays)), _PARAM_PREFIXES[0])
    self._state_prefix = next(
        (p for p in _STATE_PREFIXES if any(n.startswith(p) for n in arrays)), _STATE_PREFIXES[0])

  def __repr__(self):
    return (f"T5XCheckpoint({self.path!r}, format={self.format!r}, step={self.step}, "
            f"{len(self.param_names())} params)")

  # Every stored array, under its full name (`optimizer/state/param_states/...` included).

  def array_names(self):
    return sorted(self._arrays)

  def read_array(self, name: str, index=None) -> np.ndarray:
    """Reads one stored array (or the slice `index`) by its full flat name."""
    if name not in self._arrays:
      raise CheckpointError(f"T5X checkpoint {self.path} has no array {name!r}")
    return self._arrays[name].read(index)

  # The model parameters, named as in the model (`encoder/layers_0/mlp/wo/kernel`).

  def _params(self) -> Dict[str, Any]:
    prefix = self._param_prefix
    return {n[len(prefix):]: a for n, a in self._arrays.items() if n.startswith(prefix)}

  def param_names(self):
    return sorted(self._params())

  def shapes(self) -> Dict[str, Tuple[int, ...]]:
    return {name: tuple(a.shape) for name, a in sorted(self._params().items())}

  def dtypes(self) -> Dict[str, np.dtype]:
    return {name: np.dtype(a.dtype) for name, a in sorted(self._params().items())}

  def optimizer_state_names(self):
    """Stored optimizer-state arrays (Adafactor m/v/v_row/v_col); the step is not one."""
    step = self._state_prefix + "step"
    return sorted(n for n in self._arrays if n.startswith(self._state_prefix) and n != step)

  def param_slots(self) -> Dict[str, Dict[str, Any]]:
    """The Adafactor state per parameter: {param name: {slot: array source}}, slots from
    `ADAFACTOR_SLOTS`, in the checkpoint's own layout (T5X stores (1,) for an unused slot)."""
    prefix = self._state_prefix + "param_states/"
    slots: Dict[str, Dict[str, Any]] = {}
    for name, array in self._arrays.items():
      if name.startswith(prefix):
        param, _, slot = name[len(prefix):].rpartition("/")
        if param and slot in ADAFACTOR_SLOTS:
          slots.setdefault(param, {})[slot] = array
    return slots

  @functools.cached_property
  def step(self) -> Optional[int]:
    """The training step the checkpoint was written at, or None if it does not say."""
    name = self._state_prefix + "step"
    if name not in self._arrays:
      return None
    return int(np.asarray(self._arrays[name].read()).reshape(()))

  def load_params(self, target=None, shardings=None, drop_subtrees: Sequence[str] = ()):
    """Reads the parameters, array by array, into device arrays.

    Args:
      target: the model's parameter tree, with `jax.ShapeDtypeStruct` (optionally with
        `.sharding`), array or `nn.LogicalPartitioned` leaves. The checkpoint must fit it
        exactly (a scanned target may load an unscanned checkpoint and vice versa); values are
        cast to its dtypes. None loads the checkpoint as it is, floats as float32.
      shardings: a tree like `target` of `jax.sharding.Sharding` (or one for all arrays);
        overrides the target's own shardings. Arrays without one go to the first local device.
      drop_subtrees: top-level names (e.g. "decoder", for a dual encoder) whose arrays are
        neither read nor expected in `target`.

    Returns:
      A nested dict of `jax.Array`s shaped like `target` (or like the checkpoint).
    """
    available = self._params()
    if not available:
      raise CheckpointError(
          f"T5X checkpoint {self.path} has no parameters (nothing under "
          f"{' or '.join(_PARAM_PREFIXES)}); its arrays: {', '.join(self.array_names()[:10])}")
    dropped = [n for n in available if n.split("/")[0] in drop_subtrees]
    if dropped:
      logger.info("Not reading %d arrays under %s of T5X checkpoint %s: the model has no use "
                  "for them.", len(dropped), ", ".join(drop_subtrees), self.path)
      available = {n: a for n, a in available.items() if n not in dropped}
    if target is None:
      sources = available
      dtypes = {name: (np.float32 if jax.numpy.issubdtype(a.dtype, jax.numpy.floating)
                       else a.dtype)
                for name, a in sources.items()}
      own_shardings = {}
    else:
      flat_target = {name: _unbox(leaf) for name, leaf in tree_utils.flatten_tree(
          target, is_leaf=lambda x: hasattr(x, "unbox")).items()}
      match = tree_utils.match_to_target(
          available, {name: tuple(leaf.shape) for name, leaf in flat_target.items()})
      if not match.ok:
        raise CheckpointError(
            f"T5X checkpoint {self.path} does not fit the model:\n{match.describe()}")
      sources = match.sources
      dtypes = {name: leaf.dtype for name, leaf in flat_target.items()}
      own_shardings = {name: getattr(leaf, "sharding", None)
                       for name, leaf in flat_target.items()}

    if _is_sharding(shardings):
      given = {name: shardings for name in sources}
    else:
      given = tree_utils.flatten_tree(shardings, is_leaf=_is_sharding) if shardings else {}
    unknown = sorted(set(given) - set(sources))
    if unknown:
      raise CheckpointError(
          f"shardings given for names that the model does not have: {', '.join(unknown)}")

    self._log_unread_optimizer_state()
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    loaded = {}
    for name, source in sources.items():
      sharding = given.get(name) or own_shardings.get(name) or default
      loaded[name] = to_device(source, dtypes[name], sharding)
    logger.info("Loaded %d parameters from T5X checkpoint %s (%s format, step %s).",
                len(loaded), self.path, self.format, self.step)
    return tree_utils.unflatten_tree(loaded)

  def _log_unread_optimizer_state(self):
    unread = self.optimizer_state_names()
    if unread:
      logger.info(
          "Reading the parameters only of T5X checkpoint %s: its optimizer state (%d arrays "
          "under %s, e.g. %s) is left for the trainer, which restores it with the step when it "
          "fine-tunes from the checkpoint (unless xltransfer.train.train."
          "restore_optimizer_state = False).", self.path, len(unread), self._state_prefix,
          unread[0])


def locate_param(name: str, available) -> Optional[Tuple[str, Any, Optional[int]]]:
  """Where a model parameter's data lies among the checkpoint's parameter names.

  Returns ("same", name, None), ("stacked", [layers_0 name, layers_1 name, ...], None) for a
  scanned model parameter stored as unscanned layers, ("layer", scanned name, i) for layer i
  of an unscanned model parameter stored scanned, or None.
  """
  if name in available:
    return "same", name, None
  parts = name.split("/")
  for position, part in enumerate(parts):
    found = _UNSCANNED_LAYER.fullmatch(part)
    if part == _SCANNED_LAYER:
      layers = []
      while True:
        candidate = "/".join(parts[:position] + [f"layers_{len(layers)}"] + parts[position + 1:])
        if candidate not in available:
          break
        layers.append(candidate)
      return ("stacked", layers, None) if layers else None
    if found:
      scanned = "/".join(parts[:position] + [_SCANNED_LAYER] + parts[position + 1:])
      return ("layer", scanned, int(found.group(1))) if scanned in available else None
  return None


def to_device(source, dtype, sharding) -> jax.Array:
  """Builds the global array from an array source (`.shape`, `.read(index)`) shard by shard;
  each callback reads only its own slice."""
  dtype = np.dtype(dtype)
  # Local devices that hold the same slice (replicas) share one read from storage.
  slices_read = {}

  def read_shard(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in slices_read:
      slices_read[key] = np.asarray(source.read(tuple(index))).astype(dtype, copy=False)
    return slices_read[key]

  return jax.make_array_from_callback(tuple(source.shape), sharding, read_shard, dtype=dtype)


def read_t5x_checkpoint(path) -> T5XCheckpoint:
  """Opens a T5X checkpoint (its directory or its `checkpoint` file), detecting the format."""
  format_name, directory, file_path = _locate(str(path))
  if format_name == "orbax":
    return T5XCheckpoint(str(path), "orbax", _read_orbax(directory))
  arrays, version = _read_legacy(directory, file_path)
  return T5XCheckpoint(str(path), "legacy", arrays, version)


def load_t5x_params(path, target=None, shardings=None, drop_subtrees: Sequence[str] = ()):
  """Reads a T5X checkpoint's parameters into `target`'s layout, dtypes and shardings.

  See `T5XCheckpoint.load_params`; raises `CheckpointError` naming every parameter that does
  not fit and any path that cannot be read.
  """
  return read_t5x_checkpoint(path).load_params(target, shardings, drop_subtrees)
