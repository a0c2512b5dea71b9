"""Writes xltransfer parameters as a T5X checkpoint that T5X restores (`xl-to-t5x`).

Format: T5X's legacy checkpoint (`t5x/checkpoints.py`, `Checkpointer.save`), version 3:
  <dir>/checkpoint   msgpack of {'version': 3, 'optimizer': {
                        'target': params (T5X names),
                        'state': {'step': int32, 'param_states': {name: {m, v, v_col, v_row}}}}}
  <dir>/target.encoder.layers_0.mlp.wo.kernel/ ...   zarr (gzip) arrays written by tensorstore;
                     the msgpack holds each one's tensorstore spec, its path relative to <dir>.
Small arrays (at most `inline_max_bytes`) sit in the msgpack itself, as in T5X's own test
checkpoints. This is the format T5X restores most robustly: its default checkpointer
(`utils.RestoreCheckpointConfig.checkpointer_cls = checkpoints.Checkpointer`) reads only it,
its orbax checkpoint manager reads it too, and the released mT5 checkpoints are in it; the
orbax layout is read only by the newer manager and depends on the orbax version on both sides.

The layer layout is T5X's mT5 models' (`layers_{i}`, unscanned) unless `scanned=True` (the
`layers` axis at position 1 of scanned networks such as `scalable_t5`), whatever the layout
the parameters were trained in.

Optimizer state: `param_states` is zero-initialised in the shapes T5X's Adafactor
(`t5x/adafactor.py` `init_param_state`) gives each parameter — factored `v_row`/`v_col` for
matrices with two dimensions >= 128, a full `v` otherwise (with T5X's logical factor rules
for scanned arrays), and the (1,) placeholders for the unused slots and `m` (no momentum, as
mT5 trains) — so that T5X's restore of a full train state finds every key with the shape
it expects. The second-moment estimates therefore restart when T5X resumes training from
the export; the step is kept (the trainer's own Adafactor state is not exported). Pass `optimizer_state=False` to write the parameters and step
only: T5X's strict restore then fails on the missing `param_states`, and restores with
`RestoreCheckpointConfig.fallback_to_scratch=True` (a fresh optimizer state).

Checked by hand with T5X itself (its `checkpoints.Checkpointer.restore` over a
`FlaxOptimTrainState` with Adafactor and `standard_logical_factor_rules`, as T5X's mT5 gin
configs use): every parameter and the step come back equal, and every optimizer-state array
has the shape T5X's own `init_state` gives it, for both layer layouts. The project's tests
cannot import T5X; they check the structure against a checkpoint T5X wrote and read the
export back through `xltransfer.checkpoints.t5x`.
"""
import logging
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorstore as ts

from xltransfer.checkpoints import layout, staging, tree_utils
from xltransfer.errors import CheckpointError
from xltransfer.model.config import MT5Config

VERSION = 3  # T5X writes bfloat16 natively since version 3; what `Checkpointer.save` writes.
CHECKPOINT_FILE = "checkpoint"
DEFAULT_INLINE_MAX_BYTES = 4096
# About T5X's own target chunk size (64 MiB), so that huge arrays are not one zarr file.
_CHUNK_BYTES = 64 * 1024 * 1024

# T5X Adafactor's defaults for mT5 (`adafactor.Adafactor`, `standard_logical_factor_rules`):
# matrices factored when their smaller dimension has >= 128 entries; no first moment.
_MIN_DIM_SIZE_TO_FACTOR = 128
_STATE_SLOTS = ("m", "v", "v_col", "v_row")
_PLACEHOLDER = (1,)


def adafactor_state_shapes(shape: Tuple[int, ...], axes: Sequence[str],
                           name: str = "") -> Dict[str, Tuple[int, ...]]:
  """Shapes of T5X's Adafactor state slots (m, v, v_col, v_row) for one parameter of logical
  axes `axes`, with T5X's defaults for mT5 (the factoring is the trainer's own
  `optimizer.factoring_for`, which follows T5X's `init_param_state`)."""
  from xltransfer.train import optimizer  # pylint: disable=import-outside-toplevel

  factoring = optimizer.factoring_for(tuple(shape), tuple(axes),
                                      optimizer.STANDARD_LOGICAL_FACTOR_RULES,
                                      _MIN_DIM_SIZE_TO_FACTOR, path=name)
  return {"m": _PLACEHOLDER, **factoring.slot_shapes(shape)}


def _chunk_shape(shape: Tuple[int, ...], itemsize: int) -> list:
  chunks = list(shape)
  while chunks and int(np.prod(chunks)) * itemsize > _CHUNK_BYTES:
    largest = int(np.argmax(chunks))
    chunks[largest] = (chunks[largest] + 1) // 2
  return chunks


def _zarr_spec(array: np.ndarray, path: str) -> dict:
  return {
      "driver": "zarr",
      "dtype": array.dtype.name,
      "kvstore": {"driver": "file", "path": path},
      "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                   "chunks": _chunk_shape(array.shape, array.dtype.itemsize)},
  }


class _Writer:
  """Turns each array into what the msgpack holds: itself, or the spec of its zarr copy."""

  def __init__(self, directory: str, inline_max_bytes: int):
    self.directory = directory
    self.inline_max_bytes = inline_max_bytes
    self.context = ts.Context({"file_io_concurrency": {"limit": 32}})

  def __call__(self, name: str, array) -> object:
    array = np.asarray(array)
    if array.nbytes <= self.inline_max_bytes:
      return array
    # T5X names each array's directory after its state-dict path, '/' -> '.'.
    relative = name.replace("/", ".")
    spec = _zarr_spec(array, relative)
    absolute = dict(spec, kvstore={"driver": "file",
                                   "path": os.path.join(self.directory, relative)})
    try:
      store = ts.open(absolute, create=True, open=True, context=self.context).result()
      store.write(array).result()
    except Exception as e:  # tensorstore raises several types for write failures.
      raise CheckpointError(f"{self.directory}: cannot write {name} with tensorstore: {e}") from e
    return ts.Spec(spec).to_json()  # As T5X stores specs: relative, so the checkpoint can move.


def _relayout(params: dict, config: MT5Config, scanned: bool) -> dict:
  is_scanned = config.scan_layers
  if scanned and not is_scanned:
    return layout.stack_layers(params, config)
  if not scanned and is_scanned:
    return layout.unstack_layers(params, config)
  return params


def save_t5x_checkpoint(params, config: MT5Config, directory: str, step: int = 0, *,
                        scanned: bool = False, optimizer_state: bool = True,
                        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
                        overwrite: bool = False) -> str:
  """Writes `params` (xltransfer/T5X names, in `config`'s layer layout) as a T5X checkpoint.

  `directory` becomes the checkpoint directory (name it `<dir>/checkpoint_<step>` for T5X's
  `mode='latest'` restores). It is written complete or not at all; an existing non-empty
  one is refused unless `overwrite`. Returns the path of the `checkpoint` file.
  """
  from flax import serialization  # pylint: disable=import-outside-toplevel
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel

  host = {name: np.asarray(value) for name, value in tree_utils.flatten_tree(params).items()}
  out_config = config.replace(scan_layers=scanned)
  expected = layout.expected_param_shapes(out_config)
  target = tree_utils.flatten_tree(_relayout(tree_utils.unflatten_tree(host), config, scanned))
  wrong = sorted(n for n in set(expected) | set(target)
                 if tuple(np.shape(target.get(n, ()))) != expected.get(n))
  if wrong:
    raise CheckpointError(f"the parameters do not fit the model config ({len(wrong)} names "
                          f"differ, e.g. {wrong[:5]})")
  logical = EncoderDecoderModel(out_config).param_logical_axes()
  axes = {n: tuple(spec) for n, spec in tree_utils.flatten_tree(
      logical, is_leaf=lambda x: not isinstance(x, dict)).items()}

  with staging.staged_directory(directory, overwrite) as staged:
    write = _Writer(staged, inline_max_bytes)
    state = {"step": np.int32(step)}
    if optimizer_state:
      param_states = {}
      for name in sorted(target):
        shapes = adafactor_state_shapes(target[name].shape, axes[name], name)
        for slot in _STATE_SLOTS:
          full = f"state/param_states/{name}/{slot}"
          param_states[f"{name}/{slot}"] = write(full, np.zeros(shapes[slot], np.float32))
      state["param_states"] = tree_utils.unflatten_tree(param_states)
    written = {name: write(f"target/{name}", target[name]) for name in sorted(target)}
    contents = {"version": VERSION, "optimizer": {
        "state": state, "target": tree_utils.unflatten_tree(written)}}
    with open(os.path.join(staged, CHECKPOINT_FILE), "wb") as f:
      f.write(serialization.msgpack_serialize(contents))
  logging.info("wrote T5X checkpoint %s (step %d, %s layers, optimizer state %s)", directory,
               step, "scanned" if scanned else "unscanned",
               "zero-initialised" if optimizer_state else "omitted")
  return os.path.join(os.path.abspath(directory), CHECKPOINT_FILE)
