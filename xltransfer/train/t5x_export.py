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

Optimizer state (`param_states`, one {m, v, v_col, v_row} per parameter, in the shapes
T5X's Adafactor (`t5x/adafactor.py` `init_param_state`) gives each parameter under its mT5
settings: `standard_logical_factor_rules` and `min_dim_size_to_factor`, 128 unless told
otherwise — factored `v_row`/`v_col` for matrices with two dimensions >= that, a full `v`
otherwise, the logical rules for scanned arrays, and (1,) zeros in every unused slot):
  * from a trainer run (`trained_state`, `trained_run.load_trained_optimizer_state`): the run's
    own Adafactor state at that step, so that T5X resumes with the same second moments.
    `v_row`/`v_col`/`v` are the trainer's, re-expressed in T5X's layout by the mapping the
    trainer uses to restore T5X's state (`initial_state.param_moments_across_layouts`, run
    the other way): 1:1 where the layouts agree, rows and columns swapped where T5X's size
    heuristic and the scanned logical rules pick different rows, per-layer slices of scanned
    statistics (or stacks of unscanned ones) when the export's layer layout is not the run's,
    the means of a full `v` where T5X factors what the run did not (exact: v is a linear EMA).
    A factored moment where T5X keeps a full `v` cannot be recovered: a CheckpointError
    (export with the run's min_dim_size_to_factor, which the T5X run must then use too).
    `m` is the run's momentum with T5X's sign (the negative of optax's EMA) in its dtype (T5X
    resuming it sets beta1), or (1,) zeros, which is what T5X stores without beta1 (mT5's
    setting). The step is the run's.
  * otherwise (an `xltransfer convert` output, or `trained_state=None`): zeros, so that T5X's
    restore of a full train state finds every key with the shape it expects; the second
    moments then restart when T5X resumes. The step is kept.
Pass `optimizer_state=False` to write the parameters and step only: T5X's strict restore then
fails on the missing `param_states`, and restores with
`RestoreCheckpointConfig.fallback_to_scratch=True` (a fresh optimizer state).

Checked by hand with T5X itself (its `checkpoints.Checkpointer.restore` over a
`FlaxOptimTrainState` with Adafactor and `standard_logical_factor_rules`, as T5X's mT5 gin
configs use): every parameter and the step come back equal, and every optimizer-state array
has the shape T5X's own `init_state` gives it, for both layer layouts. The project's tests
cannot import T5X; they check the structure against a checkpoint T5X wrote and read the
export back through `xltransfer.checkpoints.t5x`. The trained state's values were not checked
with T5X itself: the tests compare them with the run's own state and restore the export
through the trainer's T5X import (whose mapping tests/test_t5x_optimizer_state.py checks
against T5X's numbers), which gives back the run's state exactly.
"""
import logging
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorstore as ts

from xltransfer.checkpoints import layout, staging, tree_utils
from xltransfer.errors import CheckpointError, UserError
from xltransfer.model.config import MT5Config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.train import initial_state
from xltransfer.train import optimizer

VERSION = 3  # T5X writes bfloat16 natively since version 3; what `Checkpointer.save` writes.
CHECKPOINT_FILE = "checkpoint"
DEFAULT_INLINE_MAX_BYTES = 4096
# About T5X's own target chunk size (64 MiB), so that huge arrays are not one zarr file.
_CHUNK_BYTES = 64 * 1024 * 1024

# T5X Adafactor's defaults for mT5 (`adafactor.Adafactor`, `standard_logical_factor_rules`):
# matrices factored when their smaller dimension has >= 128 entries; no first moment.
DEFAULT_MIN_DIM_SIZE_TO_FACTOR = 128
_STATE_SLOTS = ("m", "v", "v_col", "v_row")
_PLACEHOLDER = (1,)


def t5x_factoring(shape: Tuple[int, ...], axes: Sequence[str], name: str = "",
                  min_dim_size_to_factor: int = DEFAULT_MIN_DIM_SIZE_TO_FACTOR):
  """How T5X's Adafactor (logical axes `axes`, `standard_logical_factor_rules`) factors one
  parameter: the trainer's own `optimizer.factoring_for`, which follows `init_param_state`."""

  return optimizer.factoring_for(tuple(shape), tuple(axes),
                                 optimizer.STANDARD_LOGICAL_FACTOR_RULES,
                                 min_dim_size_to_factor, path=name)


def adafactor_state_shapes(shape: Tuple[int, ...], axes: Sequence[str], name: str = "",
                           min_dim_size_to_factor: int = DEFAULT_MIN_DIM_SIZE_TO_FACTOR
                           ) -> Dict[str, Tuple[int, ...]]:
  """Shapes of T5X's Adafactor state slots (m, v, v_col, v_row) for one parameter of logical
  axes `axes`, without momentum (`m` a placeholder)."""
  factoring = t5x_factoring(shape, axes, name, min_dim_size_to_factor)
  return {"m": _PLACEHOLDER, **factoring.slot_shapes(shape)}


class _HostArray:
  """A host array as an array source (`.shape`, `.dtype`, `.read(index)`)."""

  def __init__(self, value: np.ndarray):
    self.value = value
    self.shape = tuple(value.shape)
    self.dtype = value.dtype

  def read(self, index=None) -> np.ndarray:
    return self.value[tree_utils.full_index(index, self.shape)]


def _trained_param_states(trained, source_shapes: Dict[str, Tuple[int, ...]],
                          target_shapes: Dict[str, Tuple[int, ...]],
                          axes: Dict[str, Tuple[str, ...]], min_dim_size_to_factor: int,
                          step: int) -> Dict[str, Dict[str, np.ndarray]]:
  """{T5X parameter name: {slot: array}} of a trainer's Adafactor state (`trained`, a
  `trained_run.TrainedOptimizerState` over the parameters `source_shapes`, the run's layout) in
  T5X's layout for the parameters `target_shapes` (the export's layer layout)."""

  if trained.step != step:
    raise CheckpointError(f"{trained.step_dir}: the optimizer state is at step {trained.step} "
                          f"but the parameters at step {step}; T5X keeps one step for both")
  per_slot = {"v_row": trained.v_row, "v_col": trained.v_col, "v": trained.v,
              "momentum": trained.momentum if trained.momentum is not None else source_shapes}
  differ = sorted({f"{name} ({slot})" for slot, names in per_slot.items()
                   for name in set(names) ^ set(source_shapes)})
  if differ:
    raise CheckpointError(
        f"{trained.step_dir}: the optimizer state's parameters differ from the model's (e.g. "
        f"{differ[:5]}): not this model's Adafactor state")
  slots = {}
  for name in source_shapes:
    slots[name] = {slot: _HostArray(getattr(trained, slot)[name])
                   for slot in ("v_row", "v_col", "v")}
    if trained.momentum is not None:
      # T5X's `m` is the negative of optax's EMA (optax's updates are negative).
      slots[name]["m"] = initial_state.NegatedArray(_HostArray(trained.momentum[name]))

  def run_factoring(shape, logical_axes, name=""):
    # The run factored as T5X does with its own min_dim_size_to_factor (not recorded), or not
    # at all: threshold 0 gives the rows and columns of any factored moment, and the mapping
    # also accepts a full v.
    return t5x_factoring(shape, logical_axes, name, min_dim_size_to_factor=0)

  states, problems = {}, []
  for name in sorted(target_shapes):
    shape = target_shapes[name]
    factoring = t5x_factoring(shape, axes[name], name, min_dim_size_to_factor)
    try:
      found = initial_state.param_moments_across_layouts(
          name, shape, axes[name], factoring, slots, source_shapes, run_factoring)
    except (ValueError, UserError) as e:
      problems.append(str(e))
      continue
    if found is None:
      problems.append(f"{name}: no Adafactor state in the run's checkpoint")
      continue
    moments, momentum = found
    if trained.momentum is not None and momentum is None:
      problems.append(f"{name}: the run's momentum does not fit this parameter")
      continue
    m = (np.asarray(momentum.read()) if momentum is not None
         else np.zeros(_PLACEHOLDER, np.float32))
    states[name] = {"m": m, **{slot: np.asarray(moments[slot], np.float32)
                               for slot in ("v", "v_col", "v_row")}}
  if problems:
    raise CheckpointError(
        f"{trained.step_dir}: the run's Adafactor state cannot be written as T5X's Adafactor "
        f"(standard logical factor rules, min_dim_size_to_factor {min_dim_size_to_factor}) "
        "keeps it:\n  "
        + "\n  ".join(problems[:10])
        + (f"\n  ... {len(problems) - 10} more" if len(problems) > 10 else "")
        + "\nExport with --min_dim_size_to_factor set to the run's xltransfer.train.Adafactor."
        "min_dim_size_to_factor (and configure the T5X run that resumes alike), or with "
        "--zero_optimizer_state.")
  return states


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
                        trained_state=None,
                        min_dim_size_to_factor: int = DEFAULT_MIN_DIM_SIZE_TO_FACTOR,
                        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
                        overwrite: bool = False) -> str:
  """Writes `params` (xltransfer/T5X names, in `config`'s layer layout) as a T5X checkpoint.

  `trained_state` (a `trained_run.TrainedOptimizerState` of these parameters at `step`) is
  written as T5X's Adafactor state; without it the state is zeros, and `optimizer_state=False`
  leaves it out (see the module docstring). `min_dim_size_to_factor` is that of the T5X
  Adafactor that will restore it. `directory` becomes the checkpoint directory (name it
  `<dir>/checkpoint_<step>` for T5X's `mode='latest'` restores). It is written complete or not
  at all; an existing non-empty one is refused unless `overwrite`. Returns the path of the
  `checkpoint` file.
  """
  from flax import serialization  # pylint: disable=import-outside-toplevel

  if trained_state is not None and not optimizer_state:
    raise ValueError("trained_state given with optimizer_state=False")
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
  trained = None
  if trained_state is not None:  # converted before anything is written
    trained = _trained_param_states(
        trained_state, {n: tuple(v.shape) for n, v in host.items()},
        {n: tuple(v.shape) for n, v in target.items()}, axes, min_dim_size_to_factor, step)

  with staging.staged_directory(directory, overwrite) as staged:
    write = _Writer(staged, inline_max_bytes)
    state = {"step": np.int32(step)}
    if optimizer_state:
      param_states = {}
      for name in sorted(target):
        if trained is not None:
          slots = trained[name]
        else:
          shapes = adafactor_state_shapes(target[name].shape, axes[name], name,
                                          min_dim_size_to_factor)
          slots = {slot: np.zeros(shapes[slot], np.float32) for slot in _STATE_SLOTS}
        for slot in _STATE_SLOTS:
          full = f"state/param_states/{name}/{slot}"
          param_states[f"{name}/{slot}"] = write(full, slots[slot])
      state["param_states"] = tree_utils.unflatten_tree(param_states)
    written = {name: write(f"target/{name}", target[name]) for name in sorted(target)}
    contents = {"version": VERSION, "optimizer": {
        "state": state, "target": tree_utils.unflatten_tree(written)}}
    with open(os.path.join(staged, CHECKPOINT_FILE), "wb") as f:
      f.write(serialization.msgpack_serialize(contents))
  logging.info("wrote T5X checkpoint %s (step %d, %s layers, optimizer state: %s)", directory,
               step, "scanned" if scanned else "unscanned",
               describe_optimizer_state(optimizer_state, trained_state))
  return os.path.join(os.path.abspath(directory), CHECKPOINT_FILE)


def describe_optimizer_state(optimizer_state: bool, trained_state) -> str:
  """What `save_t5x_checkpoint` writes as the optimizer state, for logs and the CLI."""
  if not optimizer_state:
    return "omitted (parameters and step only)"
  if trained_state is None:
    return "zero-initialised Adafactor state (the second moments restart)"
  momentum = "with" if trained_state.momentum is not None else "without"
  return (f"the run's trained Adafactor state (v_row/v_col/v, {momentum} momentum m) of step "
          f"{trained_state.step}")
