"""The train state a run starts from when MODEL_DIR has no checkpoint of its own.

From a T5X checkpoint it restores, as T5X's fine-tuning does, the parameters, the Adafactor
state and the step (`load_initial_state`; `restore_optimizer_state=False` loads the parameters
only); from any other format (checkpoints/loading.py) only the parameters, with a fresh
optimizer at step 0. Mapping T5X's Adafactor slots onto this optimizer's state is here because
it follows the optimizer's factoring rules (optimizer.py); the T5X export reads it too.
"""
import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from jax.sharding import PartitionSpec

from xltransfer.checkpoints import loading
from xltransfer.errors import CheckpointError, ConfigError
from xltransfer.train import optimizer as optimizer_lib
from xltransfer.train.state import TrainState


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
  if not (restore_optimizer_state and loading.is_t5x_initial_checkpoint(path)):
    params, description = loading.load_initial_params(path, model, trainer.state_shardings.params)
    if loading.is_t5x_initial_checkpoint(path):
      restored = ("parameters only (xltransfer.train.train.restore_optimizer_state = False): "
                  "its Adafactor state and step are not restored; a fresh optimizer starts at "
                  "step 0 and TRAIN_STEPS counts fine-tuning steps")
    else:
      restored = ("parameters only (it holds no T5X optimizer state); a fresh optimizer "
                  "starts at step 0")
    return InitialState(trainer.state_from_params(params), description, restored)

  read = loading.format_loader("xltransfer.checkpoints.t5x", "read_t5x_checkpoint", path, "T5X")
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
