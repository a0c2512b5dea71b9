"""Fine-tuning from a T5X checkpoint restores its Adafactor state and step, as T5X does.

Checked here:
  * a step of our Adafactor from a restored state gives T5X's numbers: the golden values of
    T5X's own t5x/adafactor_test.py (`test_apply_gradient`,
    `test_apply_gradient_with_global_norm_clipping`), and a step from step 100 derived by hand;
  * parameters, step and v_row/v_col/v of a T5X checkpoint land in our trainer state, 1:1 for an
    unscanned model (the same layout as T5X), stacked for a scanned one, on a checkpoint this
    test writes in T5X's format and on the real T5X test checkpoint (../shared);
  * the step semantics of `train`: TRAIN_STEPS counts the checkpoint's steps (T5X
    runs/finetune.gin), `restore_optimizer_state=False` keeps the old behaviour;
  * our own old checkpoints (before the T5X layout) are refused where their layout differs.

The T5X checkpoint format is that of t5x/checkpoints.py (`Checkpointer.save`, legacy msgpack,
version 3): `{'version': 3, 'optimizer': {'target': params, 'state': {'step': int32,
'param_states': {<param path>: {'m', 'v', 'v_col', 'v_row'}}}}}` serialised with
`flax.serialization.msgpack_serialize`, every array inline, an unused slot stored as zeros((1,))
(t5x/adafactor.py `init_param_state`).
"""
import functools
import json
import logging
import os
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P


import train_fixture_tasks  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from xltransfer.checkpoints import tree_utils  # noqa: E402
from xltransfer.errors import CheckpointError, ConfigError  # noqa: E402
from xltransfer.model.config import MT5Config, get_config  # noqa: E402
from xltransfer.model.models import EncoderDecoderModel  # noqa: E402
from xltransfer.partitioning import create_partitioner  # noqa: E402
from xltransfer.train import checkpointing, run  # noqa: E402
from xltransfer.train import initial_state
from xltransfer.train import input as input_lib  # noqa: E402
from xltransfer.train import optimizer as opt_lib  # noqa: E402
from xltransfer.train.schedules import learning_rate_schedule  # noqa: E402
from xltransfer.train.trainer import Trainer, to_host  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_gin")

SHARED_FIXTURE = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "t5x"
                  / "test_t5_tiny.checkpoint_0")
# The tiny T5.1.1 of T5X's test data.
T5X_TINY = MT5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                     num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
STEP = 100
# Small enough that the tiny model's kernels (64 x 64, 64 x 128) are factored.
MIN_DIM = 16


# ----------------------------------------------------------------------------- references


def t5x_factored_dims(shape, min_dim_size_to_factor):
  """T5X `Adafactor._factored_dims` (t5x/adafactor.py), written out for unscanned params:
  None, or (row dim, column dim): the two largest dims, the smaller one the row."""
  if len(shape) < 2:
    return None
  sorted_dims = np.argsort(shape)
  if shape[sorted_dims[-2]] < min_dim_size_to_factor:
    return None
  return int(sorted_dims[-2]), int(sorted_dims[-1])


def t5x_adafactor_step(param, grad, slots, step, lr, decay_rate=0.8, eps1=1e-30, eps2=1e-3,
                       clip=1.0):
  """T5X `Adafactor.apply_param_gradient` for one unscanned parameter in float64, with the
  stored step as T5X counts it: decay = 1 - (step + 1) ** -0.8 for the update that moves the
  state from `step` to `step + 1` (`_decay_rate_pow(step - step_offset)`, step_offset 0)."""
  param, grad = param.astype(np.float64), grad.astype(np.float64)
  decay = 1.0 - (step + 1.0) ** -decay_rate
  grad_sqr = grad * grad + eps1
  new = dict(slots)
  if slots["v"].shape == param.shape:
    new["v"] = decay * slots["v"] + (1 - decay) * grad_sqr
    y = grad / np.sqrt(new["v"])
  else:
    row, col = t5x_factored_dims(param.shape, 0)
    new["v_row"] = decay * slots["v_row"] + (1 - decay) * grad_sqr.mean(axis=col)
    new["v_col"] = decay * slots["v_col"] + (1 - decay) * grad_sqr.mean(axis=row)
    row_factor = (new["v_row"] / new["v_row"].mean()) ** -0.5
    col_factor = new["v_col"] ** -0.5
    y = grad * np.expand_dims(row_factor, col) * np.expand_dims(col_factor, row)
  y = y / max(1.0, np.sqrt(np.mean(y * y)) / clip)
  scale = max(np.sqrt(np.mean(param * param)), eps2)
  return param - lr * scale * y, new


def write_t5x_checkpoint(path: Path, params_flat, slots_flat, step):
  """A legacy T5X msgpack checkpoint (t5x/checkpoints.py, version 3, arrays inline)."""
  param_states = {}
  for name, slots in slots_flat.items():
    for slot, value in slots.items():
      param_states[f"{name}/{slot}"] = np.asarray(value, np.float32)
  contents = {"version": 3, "optimizer": {
      "target": tree_utils.unflatten_tree({n: np.asarray(v) for n, v in params_flat.items()}),
      "state": {"step": np.int32(step),
                "param_states": tree_utils.unflatten_tree(param_states)}}}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(flax.serialization.msgpack_serialize(contents))
  return path


def t5x_slots(shape, min_dim, rng):
  """Known positive Adafactor slots of one parameter in T5X's layout (no momentum), consistent
  as training makes them: v_row and v_col are the row and column means of one positive v, so
  both have the same mean (which the factored update relies on)."""
  zeros = np.zeros((1,), np.float32)
  full = rng.uniform(0.5, 2.0, shape)
  dims = t5x_factored_dims(shape, min_dim)
  if dims is None:
    return {"v": full.astype(np.float32), "v_row": zeros, "v_col": zeros, "m": zeros}
  row, col = dims
  return {"v_row": full.mean(axis=col).astype(np.float32),
          "v_col": full.mean(axis=row).astype(np.float32), "v": zeros, "m": zeros}


# ----------------------------------------------------------------------------- helpers


def _trainer(config, **adafactor):
  model = EncoderDecoderModel(config)
  optimizer = opt_lib.Adafactor(**adafactor).create(
      learning_rate_schedule("constant", 0.01), model.abstract_params(),
      model.param_logical_axes())
  return model, Trainer(model, optimizer, create_partitioner())


def _flat(tree):
  return {name: np.asarray(value) for name, value in tree_utils.flatten_tree(to_host(tree)).items()}


def _factored_state(opt_state):
  (found,) = [s for s in opt_state if isinstance(s, opt_lib.FactoredRmsState)]
  return found


def _counts(opt_state):
  return {type(s).__name__: int(to_host(s.count)) for s in opt_state if hasattr(s, "count")}


@pytest.fixture(scope="module")
def tiny_t5x(tmp_path_factory):
  """Our tiny mT5 saved by this test as a T5X checkpoint at step 100 with known slots."""
  model = EncoderDecoderModel(get_config("tiny"))
  params = _flat(model.init(jax.random.PRNGKey(3)))
  rng = np.random.default_rng(0)
  slots = {name: t5x_slots(value.shape, MIN_DIM, rng) for name, value in params.items()}
  path = write_t5x_checkpoint(tmp_path_factory.mktemp("t5x") / "checkpoint_100" / "checkpoint",
                              params, slots, STEP)
  return path.parent, params, slots


# ----------------------------------------------------------------------------- T5X's numbers


def _one_update(params, axes, v_row, v_col, v, grads, step, stored_momentum=None, **adafactor):
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  optimizer = opt_lib.Adafactor(**adafactor).create(
      learning_rate_schedule("constant", 0.1), abstract, axes)
  state = optimizer.state_with(jax.eval_shape(optimizer.init, abstract), step, v_row, v_col, v,
                               stored_momentum)
  state = jax.tree.map(jnp.asarray, state)
  updates, new_state = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates), new_state


def test_t5x_golden_apply_gradient_factored():
  """t5x/adafactor_test.py `test_apply_gradient`: x = ones((3, 2)), step 1, v_row [0.9, 0.9],
  v_col [0.1] * 3, gradient ones, lr 0.1, min_dim_size_to_factor 0."""
  params, grads = {"x": jnp.ones((3, 2))}, {"x": jnp.ones((3, 2))}
  new_params, state = _one_update(
      params, {"x": P("embed", "mlp")}, {"x": np.array([0.9, 0.9])},
      {"x": np.array([0.1, 0.1, 0.1])}, {"x": np.zeros((1,))}, grads, step=1,
      min_dim_size_to_factor=0)
  factored = _factored_state(state)
  np.testing.assert_allclose(factored.v_row["x"], [0.9574349] * 2, rtol=1e-6)
  np.testing.assert_allclose(factored.v_col["x"], [0.6169143] * 3, rtol=1e-6)
  np.testing.assert_allclose(new_params["x"], 0.9 * np.ones((3, 2)), rtol=1e-6)
  assert int(factored.count) == 2


def test_t5x_golden_apply_gradient_unfactored_with_momentum():
  """`test_apply_gradient`, second case: beta1 0.0, v 0.5, m 0 -> v 0.787174, m 0.1 (T5X's m
  is the positive update; optax's EMA holds the negative one)."""
  params, grads = {"x": jnp.ones((3, 2))}, {"x": jnp.ones((3, 2))}
  new_params, state = _one_update(
      params, {"x": P("embed", "mlp")}, {"x": np.zeros((1,))}, {"x": np.zeros((1,))},
      {"x": 0.5 * np.ones((3, 2))}, grads, step=1, stored_momentum={"x": np.zeros((3, 2))},
      momentum=0.0, min_dim_size_to_factor=32)
  np.testing.assert_allclose(_factored_state(state).v["x"], 0.787174 * np.ones((3, 2)),
                             rtol=1e-6)
  np.testing.assert_allclose(state[-1].ema["x"], -0.1 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_allclose(new_params["x"], 0.9 * np.ones((3, 2)), rtol=1e-6)


def test_t5x_golden_apply_gradient_with_global_norm_clipping():
  """`test_apply_gradient_with_global_norm_clipping`: as the first, gradients clipped to norm 1."""
  params, grads = {"x": jnp.ones((3, 2))}, {"x": jnp.ones((3, 2))}
  new_params, state = _one_update(
      params, {"x": P("embed", "mlp")}, {"x": np.array([0.9, 0.9])},
      {"x": np.array([0.1, 0.1, 0.1])}, {"x": np.zeros((1,))}, grads, step=1,
      min_dim_size_to_factor=0, global_norm_clip_threshold=1.0)
  np.testing.assert_allclose(_factored_state(state).v_row["x"], [0.478811] * 2, rtol=1e-5)
  np.testing.assert_allclose(_factored_state(state).v_col["x"], [0.13829] * 3, rtol=1e-5)
  np.testing.assert_allclose(new_params["x"], 0.9 * np.ones((3, 2)), rtol=1e-6)


# ----------------------------------------------------------------------------- restore


def test_restores_params_step_and_state_one_to_one(tiny_t5x):
  path, params, slots = tiny_t5x
  model, trainer = _trainer(get_config("tiny"), min_dim_size_to_factor=MIN_DIM)
  initial = initial_state.load_initial_state(str(path), model, trainer)
  assert initial.description == f"T5X checkpoint {path}"
  state = initial.state
  assert int(to_host(state.step)) == STEP
  # Every counter (second-moment decay, learning-rate schedule) continues from the step.
  assert _counts(state.opt_state) == {"FactoredRmsState": STEP, "ScaleByScheduleState": STEP}
  for name, value in _flat(state.params).items():
    np.testing.assert_array_equal(value, params[name], err_msg=name)
  factored = _factored_state(state.opt_state)
  restored = {slot: _flat(getattr(factored, slot)) for slot in ("v_row", "v_col", "v")}
  kinds = set()
  for name, stored in slots.items():
    for slot in ("v_row", "v_col", "v"):
      # Our layout is T5X's: each slot maps 1:1, shapes included.
      np.testing.assert_array_equal(restored[slot][name], stored[slot], err_msg=f"{name} {slot}")
    kinds.add(stored["v"].shape == (1,))
  assert kinds == {True, False}  # both factored and unfactored parameters were checked
  # Square q kernels and the o kernels (joined_kv rows) are factored as T5X's heuristic says.
  q = "encoder/layers_0/attention/query/kernel"
  assert restored["v_row"][q].shape == (64,) and restored["v_col"][q].shape == (64,)
  # Sharded like the parameters (the existing rule), on every leaf.
  placed = jax.tree.leaves(state.opt_state)
  wanted = jax.tree.leaves(trainer.state_shardings.opt_state)
  assert [leaf.sharding for leaf in placed] == wanted


@pytest.mark.slow
def test_first_update_from_restored_state_is_t5x_s(tiny_t5x):
  """One step of our Adafactor from the restored step-100 state, parameter by parameter, is
  `t5x_adafactor_step` (T5X's formula in float64, decay 1 - 101 ** -0.8)."""
  path, params, slots = tiny_t5x
  model, trainer = _trainer(get_config("tiny"), min_dim_size_to_factor=MIN_DIM)
  state = initial_state.load_initial_state(str(path), model, trainer).state
  rng = np.random.default_rng(5)
  grads_flat = {n: rng.normal(size=v.shape).astype(np.float32) for n, v in params.items()}
  grads = tree_utils.unflatten_tree({n: jnp.asarray(g) for n, g in grads_flat.items()})
  updates, new_opt = jax.jit(trainer.optimizer.update)(grads, state.opt_state, state.params)
  new_params = _flat(optax.apply_updates(state.params, updates))
  new_factored = _factored_state(new_opt)
  new_slots = {slot: _flat(getattr(new_factored, slot)) for slot in ("v_row", "v_col", "v")}
  for name, param in params.items():
    expected, expected_slots = t5x_adafactor_step(param, grads_flat[name], slots[name], STEP,
                                                  lr=0.01)
    assert np.abs(expected - param).max() > 1e-5, name  # the update is not negligible
    np.testing.assert_allclose(new_params[name], expected, rtol=2e-5, atol=1e-6, err_msg=name)
    for slot in ("v_row", "v_col", "v"):
      if expected_slots[slot].shape != (1,):
        np.testing.assert_allclose(new_slots[slot][name], expected_slots[slot], rtol=1e-5,
                                   err_msg=f"{name} {slot}")
  assert int(to_host(new_factored.count)) == STEP + 1


@pytest.mark.slow
def test_scanned_model_stacks_the_layers_and_updates_alike(tiny_t5x):
  path, params, slots = tiny_t5x
  unscanned_model, unscanned = _trainer(get_config("tiny"), min_dim_size_to_factor=MIN_DIM)
  scanned_model, scanned = _trainer(get_config("tiny", scan_layers=True),
                                    min_dim_size_to_factor=MIN_DIM)
  state_u = initial_state.load_initial_state(str(path), unscanned_model, unscanned).state
  state_s = initial_state.load_initial_state(str(path), scanned_model, scanned).state
  assert int(to_host(state_s.step)) == STEP
  factored = _factored_state(state_s.opt_state)
  v_row, v_col = _flat(factored.v_row), _flat(factored.v_col)
  # q [embed, layers, joined_kv]: rows are `embed` (the logical rule); T5X's unscanned square
  # kernel also has dim 0 (embed) as its row, so v_row stacks the layers' v_row on axis 1.
  q = "encoder/layers/attention/query/kernel"
  np.testing.assert_array_equal(v_row[q], np.stack(
      [slots[f"encoder/layers_{i}/attention/query/kernel"]["v_row"] for i in range(2)], 1))
  # o [joined_kv, layers, embed]: T5X's unscanned row is dim 0 (joined_kv), ours is embed, so
  # the scanned v_row (mean over joined_kv) is the layers' v_col.
  o = "encoder/layers/attention/out/kernel"
  np.testing.assert_array_equal(v_row[o], np.stack(
      [slots[f"encoder/layers_{i}/attention/out/kernel"]["v_col"] for i in range(2)], 0))
  np.testing.assert_array_equal(v_col[o], np.stack(
      [slots[f"encoder/layers_{i}/attention/out/kernel"]["v_row"] for i in range(2)], 1))
  # The same update either way (scanning changes where statistics live, not their values).
  rng = np.random.default_rng(9)
  grads_u = {n: rng.normal(size=v.shape).astype(np.float32) for n, v in params.items()}
  grads_s = {}
  for name in _flat(state_s.params):
    if "/layers/" in name:
      grads_s[name] = np.stack([grads_u[name.replace("/layers/", f"/layers_{i}/")]
                                for i in range(2)], 1)
    else:
      grads_s[name] = grads_u[name]
  out = {}
  for key, trainer, state, grads in (("u", unscanned, state_u, grads_u),
                                     ("s", scanned, state_s, grads_s)):
    tree = tree_utils.unflatten_tree({n: jnp.asarray(g) for n, g in grads.items()})
    updates, _ = jax.jit(trainer.optimizer.update)(tree, state.opt_state, state.params)
    out[key] = _flat(optax.apply_updates(state.params, updates))
  for name, value in out["s"].items():
    if "/layers/" in name:
      for i in range(2):
        np.testing.assert_allclose(value[:, i], out["u"][name.replace("/layers/", f"/layers_{i}/")],
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    else:
      np.testing.assert_allclose(value, out["u"][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_optimizer_state_errors_name_the_parameter(tmp_path, tiny_t5x):
  _, params, slots = tiny_t5x
  model, trainer = _trainer(get_config("tiny"), min_dim_size_to_factor=MIN_DIM)
  no_state = write_t5x_checkpoint(tmp_path / "none" / "checkpoint", params, {}, STEP).parent
  with pytest.raises(CheckpointError, match="holds no Adafactor state"):
    initial_state.load_initial_state(str(no_state), model, trainer)
  wrong = dict(slots)
  wi = "encoder/layers_1/mlp/wi_0/kernel"
  wrong[wi] = dict(slots[wi], v_row=np.ones((7,), np.float32))
  bad = write_t5x_checkpoint(tmp_path / "bad" / "checkpoint", params, wrong, STEP).parent
  with pytest.raises(CheckpointError,
                     match=rf"(?s){wi}: stored v_row \(7,\).*restore_optimizer_state"):
    initial_state.load_initial_state(str(bad), model, trainer)
  # A factored checkpoint cannot give a full second moment (factored=False here).
  model_f, trainer_f = _trainer(get_config("tiny"), factored=False)
  with pytest.raises(CheckpointError, match="fit neither"):
    initial_state.load_initial_state(str(tiny_t5x[0]), model_f, trainer_f)
  # No step to continue from.
  contents = flax.serialization.msgpack_restore((tiny_t5x[0] / "checkpoint").read_bytes())
  del contents["optimizer"]["state"]["step"]
  stepless = tmp_path / "stepless" / "checkpoint"
  stepless.parent.mkdir()
  stepless.write_bytes(flax.serialization.msgpack_serialize(contents))
  with pytest.raises(CheckpointError, match="has no state/step to continue from"):
    initial_state.load_initial_state(str(stepless.parent), model, trainer)
  # Parameters only, fresh optimizer: the opt-out.
  initial = initial_state.load_initial_state(str(bad), model, trainer,
                                             restore_optimizer_state=False)
  assert int(to_host(initial.state.step)) == 0
  assert "restore_optimizer_state = False" in initial.restored


@pytest.mark.slow
def test_momentum_is_restored_as_the_negated_ema(tmp_path, tiny_t5x, caplog):
  """T5X's `m` (beta1) is the EMA of the positive update; optax's EMA of the negative one."""
  _, params, slots = tiny_t5x
  with_m = {name: dict(s) for name, s in slots.items()}
  rng = np.random.default_rng(4)
  wo = "decoder/layers_0/mlp/wo/kernel"
  with_m[wo]["m"] = rng.normal(size=params[wo].shape).astype(np.float32)
  path = write_t5x_checkpoint(tmp_path / "m" / "checkpoint", params, with_m, STEP).parent
  model, trainer = _trainer(get_config("tiny"), min_dim_size_to_factor=MIN_DIM, momentum=0.9)
  with caplog.at_level(logging.INFO):
    state = initial_state.load_initial_state(str(path), model, trainer).state
  ema = _flat(state.opt_state[-1].ema)
  np.testing.assert_array_equal(ema[wo], -with_m[wo]["m"])
  assert not np.any(ema["encoder/layers_0/mlp/wo/kernel"])  # no `m` stored: zeros
  assert "has no momentum `m` for" in caplog.text
  assert _counts(state.opt_state)["EmaState"] == STEP


def _t5x_scanned_checkpoint(path, rng):
  """Our tiny scanned mT5 as a T5X checkpoint of a scanned model (layers on axis 1), its
  slots factored as T5X's logical rule does (rows: `embed`, columns: the other non-layer
  axes, any size), computed here as means of one full positive v per parameter."""
  model = EncoderDecoderModel(get_config("tiny", scan_layers=True))
  params = _flat(model.init(jax.random.PRNGKey(4)))
  axes = dict(zip(
      [n for n in tree_utils.flatten_tree(model.abstract_params())],
      jax.tree.leaves(model.param_logical_axes(), is_leaf=lambda x: isinstance(x, P))))
  zeros = np.zeros((1,), np.float32)
  slots, full = {}, {}
  for name, value in params.items():
    full[name] = rng.uniform(0.5, 2.0, value.shape)
    names = tuple(axes[name])
    if "layers" in names and len(names) == 3:
      rows = tuple(i for i, a in enumerate(names) if a == "embed")
      cols = tuple(i for i, a in enumerate(names) if a not in ("embed", "layers"))
      slots[name] = {"v_row": full[name].mean(axis=cols).astype(np.float32),
                     "v_col": full[name].mean(axis=rows).astype(np.float32), "v": zeros,
                     "m": zeros}
    elif t5x_factored_dims(value.shape, MIN_DIM) is not None and "layers" not in names:
      row, col = t5x_factored_dims(value.shape, MIN_DIM)
      slots[name] = {"v_row": full[name].mean(axis=col).astype(np.float32),
                     "v_col": full[name].mean(axis=row).astype(np.float32), "v": zeros,
                     "m": zeros}
    else:
      slots[name] = {"v": full[name].astype(np.float32), "v_row": zeros, "v_col": zeros,
                     "m": zeros}
  write_t5x_checkpoint(path / "checkpoint", params, slots, STEP)
  return params, slots, full


@pytest.mark.slow
def test_scanned_t5x_checkpoint_into_scanned_and_unscanned_models(tmp_path):
  params, slots, full = _t5x_scanned_checkpoint(tmp_path / "scanned", np.random.default_rng(6))
  model, trainer = _trainer(get_config("tiny", scan_layers=True), min_dim_size_to_factor=MIN_DIM)
  factored = _factored_state(initial_state.load_initial_state(
      str(tmp_path / "scanned"), model, trainer).state.opt_state)
  for slot in ("v_row", "v_col", "v"):
    for name, value in _flat(getattr(factored, slot)).items():
      np.testing.assert_array_equal(value, slots[name][slot], err_msg=f"{name} {slot}")
  # Unscanned: each layer's slots in T5X's unscanned layout, i.e. the means of that layer's
  # slice of the full v along T5X's heuristic dims (or the slice itself when unfactored).
  model, trainer = _trainer(get_config("tiny"), min_dim_size_to_factor=MIN_DIM)
  state = initial_state.load_initial_state(str(tmp_path / "scanned"), model, trainer).state
  factored = _factored_state(state.opt_state)
  got = {slot: _flat(getattr(factored, slot)) for slot in ("v_row", "v_col", "v")}
  checked = 0
  for name in got["v"]:
    scanned_name, layer = name, None
    for i in range(2):
      if f"/layers_{i}/" in name:
        scanned_name, layer = name.replace(f"/layers_{i}/", "/layers/"), i
    if layer is None:
      continue
    v = full[scanned_name].take(layer, axis=1)
    dims = t5x_factored_dims(v.shape, MIN_DIM)
    if dims is None:
      np.testing.assert_allclose(got["v"][name], v, rtol=1e-6, err_msg=name)
    else:
      np.testing.assert_allclose(got["v_row"][name], v.mean(axis=dims[1]), rtol=1e-5,
                                 err_msg=name)
      np.testing.assert_allclose(got["v_col"][name], v.mean(axis=dims[0]), rtol=1e-5,
                                 err_msg=name)
    checked += 1
  assert checked == 2 * (9 + 14)  # every layer parameter of encoder and decoder


def test_dual_encoder_restores_the_encoder_state(tiny_t5x):
  # pylint: disable-next=import-outside-toplevel
  from xltransfer.model.dual_encoder import DualEncoderModel
  path, _, slots = tiny_t5x
  model = DualEncoderModel(get_config("tiny"))
  optimizer = opt_lib.Adafactor(min_dim_size_to_factor=MIN_DIM).create(
      learning_rate_schedule(), model.abstract_params(), model.param_logical_axes())
  trainer = Trainer(model, optimizer, create_partitioner())
  state = initial_state.load_initial_state(str(path), model, trainer).state
  v_row = _flat(_factored_state(state.opt_state).v_row)
  assert not any(name.startswith("decoder/") for name in v_row)
  wi = "encoder/layers_1/mlp/wi_1/kernel"
  np.testing.assert_array_equal(v_row[wi], slots[wi]["v_row"])


# ----------------------------------------------------------------------------- the real fixture


def _fixture_with_state(tmp_path):
  """The real T5X test checkpoint, its Adafactor state filled with known positive values and
  its step set to 100, written back in the same format."""
  if not SHARED_FIXTURE.exists():
    pytest.skip(f"shared T5X fixture {SHARED_FIXTURE} is absent (it lives in the repo's "
                "sibling ../shared)")
  contents = flax.serialization.msgpack_restore(SHARED_FIXTURE.read_bytes())
  flat = tree_utils.flatten_tree(contents["optimizer"]["state"]["param_states"])
  rng = np.random.default_rng(11)
  filled = {}
  for name, value in flat.items():
    value = np.asarray(value)
    is_used = name.endswith("/v") and value.shape != (1,)  # fixture: all unfactored (dims 8)
    filled[name] = (rng.uniform(0.5, 2.0, value.shape).astype(np.float32) if is_used
                    else value)
  assert any(v.shape != (1,) and np.all(v > 0) for v in filled.values())
  contents["optimizer"]["state"]["param_states"] = tree_utils.unflatten_tree(filled)
  contents["optimizer"]["state"]["step"] = np.int32(STEP)
  path = tmp_path / "checkpoint_100" / "checkpoint"
  path.parent.mkdir()
  path.write_bytes(flax.serialization.msgpack_serialize(contents))
  params = tree_utils.flatten_tree(contents["optimizer"]["target"])
  return path.parent, params, filled


def test_real_t5x_checkpoint_state_restores(tmp_path):
  path, params, filled = _fixture_with_state(tmp_path)
  model, trainer = _trainer(T5X_TINY)
  state = initial_state.load_initial_state(str(path), model, trainer).state
  assert int(to_host(state.step)) == STEP
  assert _counts(state.opt_state) == {"FactoredRmsState": STEP, "ScaleByScheduleState": STEP}
  for name, value in _flat(state.params).items():
    np.testing.assert_array_equal(value, params[name], err_msg=name)
  v = _flat(_factored_state(state.opt_state).v)
  assert len(v) == 52
  for name, value in v.items():
    np.testing.assert_array_equal(value, filled[f"{name}/v"], err_msg=name)
  # A step from it is T5X's.
  rng = np.random.default_rng(2)
  grads = {n: rng.normal(size=np.shape(p)).astype(np.float32) for n, p in params.items()}
  updates, _ = jax.jit(trainer.optimizer.update)(
      tree_utils.unflatten_tree({n: jnp.asarray(g) for n, g in grads.items()}),
      state.opt_state, state.params)
  new = _flat(optax.apply_updates(state.params, updates))
  for name in ("encoder/layers_0/attention/query/kernel", "decoder/logits_dense/kernel",
               "encoder/encoder_norm/scale"):
    slots = {s: np.asarray(filled[f"{name}/{s}"], np.float64) for s in ("v", "v_row", "v_col")}
    expected, _ = t5x_adafactor_step(np.asarray(params[name]), grads[name], slots, STEP, 0.01)
    np.testing.assert_allclose(new[name], expected, rtol=2e-5, atol=1e-6, err_msg=name)


def test_real_t5x_checkpoint_state_into_a_scanned_model(tmp_path):
  """T5X factors a scanned parameter by its logical rule whatever its size, so the fixture's
  full per-layer v (dims of 8, below min_dim_size_to_factor) becomes v_row/v_col means."""
  path, _, filled = _fixture_with_state(tmp_path)
  model, trainer = _trainer(T5X_TINY.replace(scan_layers=True))
  factored = _factored_state(initial_state.load_initial_state(str(path), model,
                                                              trainer).state.opt_state)
  wo = "encoder/layers/mlp/wo/kernel"  # [mlp 16, layers 2, embed 8]: rows embed (dim 2)
  layers = [filled[f"encoder/layers_{i}/mlp/wo/kernel/v"] for i in range(2)]
  np.testing.assert_allclose(_flat(factored.v_row)[wo],
                             np.stack([v.mean(axis=0) for v in layers], 0), rtol=1e-6)
  np.testing.assert_allclose(_flat(factored.v_col)[wo],
                             np.stack([v.mean(axis=1) for v in layers], 1), rtol=1e-6)
  norm = "encoder/layers/pre_mlp_layer_norm/scale"
  np.testing.assert_array_equal(_flat(factored.v)[norm], np.stack(
      [filled[f"encoder/layers_{i}/pre_mlp_layer_norm/scale/v"] for i in range(2)], 1))


# ----------------------------------------------------------------------------- train()


def _train(tmp_path, initial, **kwargs):
  model = EncoderDecoderModel(get_config("tiny"))
  dataset = input_lib.DatasetConfig("xlt_test_copy", {"inputs": 32, "targets": 32},
                                    batch_size=8, shuffle=False)
  return run.train(
      model_dir=str(tmp_path / "run"), model=model, train_dataset=dataset,
      initial_checkpoint_path=str(initial), log_period=1,
      learning_rate=learning_rate_schedule("constant", 0.01),
      optimizer=opt_lib.Adafactor(min_dim_size_to_factor=MIN_DIM),
      checkpoint_manager=functools.partial(checkpointing.CheckpointManager, period=1,
                                           async_save=False), **kwargs)


@pytest.mark.slow
def test_train_continues_the_t5x_step_count(tmp_path, tiny_t5x, caplog):
  path = tiny_t5x[0]
  with pytest.raises(ConfigError, match=r"TRAIN_STEPS 100 is not beyond step 100 .*"
                                        r"TRAIN_STEPS = 100 \+ N"):
    _train(tmp_path, path, total_steps=STEP)
  with caplog.at_level(logging.INFO):
    result = _train(tmp_path, path, total_steps=STEP + 2)
  assert result["status"] == "completed" and result["step"] == STEP + 2
  assert (f"starting from INITIAL_CHECKPOINT_PATH (T5X checkpoint {path}): parameters, "
          f"Adafactor state and step {STEP}") in caplog.text
  assert f"training runs from step {STEP} to TRAIN_STEPS {STEP + 2}" in caplog.text
  assert sorted(os.listdir(tmp_path / "run")).count(f"checkpoint_{STEP + 2}") == 1
  # Our own checkpoint of it resumes (the layout is recorded).
  with open(tmp_path / "run" / f"checkpoint_{STEP + 2}" / "progress" / "metadata") as f:
    assert json.load(f)[checkpointing.LAYOUT_KEY] == opt_lib.STATE_LAYOUT
  assert _train(tmp_path, path, total_steps=STEP + 3)["step"] == STEP + 3


@pytest.mark.slow
def test_train_opt_out_starts_a_fresh_optimizer(tmp_path, tiny_t5x, caplog):
  with caplog.at_level(logging.INFO):
    result = _train(tmp_path, tiny_t5x[0], total_steps=2, restore_optimizer_state=False)
  assert result["step"] == 2
  assert ("parameters only (xltransfer.train.train.restore_optimizer_state = False): its "
          "Adafactor state and step are not restored") in caplog.text


@pytest.mark.slow
def test_restored_state_trains_alike_on_one_device_and_a_2x2_mesh(tiny_t5x):
  """The restored state is sharded like the parameters (data x model mesh of 4 CPU devices):
  two steps from the T5X checkpoint give the one-device run's losses and parameters."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import train_cli_helpers as helpers  # pylint: disable=import-outside-toplevel
  path = tiny_t5x[0]
  runs = {"one": 1, "four": 4}
  procs = {}
  for name, devices in runs.items():
    model_dir = str(path.parent / f"run_{name}")
    extra = [f"--gin.INITIAL_CHECKPOINT_PATH='{path}'", f"--gin.TRAIN_STEPS={STEP + 2}"]
    if devices == 4:
      extra.append("--gin.xltransfer.partitioning.create_mesh.model=2")
    procs[name] = (model_dir, subprocess.Popen(
        helpers.train_command(model_dir, *extra), env=helpers.train_env(devices),
        cwd=helpers.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for name, (model_dir, proc) in procs.items():
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-6000:]
    assert f"Adafactor state and step {STEP}" in err
    if name == "four":
      assert "mesh {'data': 2, 'model': 2} over 4 devices" in err
  (one, _), (four, _) = procs["one"], procs["four"]
  losses_one, losses_four = helpers.train_losses(one), helpers.train_losses(four)
  assert sorted(losses_one) == sorted(losses_four) == [STEP + 1, STEP + 2]
  np.testing.assert_allclose([losses_four[s] for s in sorted(losses_one)],
                             [losses_one[s] for s in sorted(losses_one)], rtol=1e-5)
  a = helpers.load_params(os.path.join(one, f"checkpoint_{STEP + 2}"))
  b = helpers.load_params(os.path.join(four, f"checkpoint_{STEP + 2}"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- our old checkpoints


def _save_without_layout(manager_dir, trainer, model, label=None):
  manager = checkpointing.CheckpointManager(str(manager_dir), period=1, async_save=False)
  state = trainer.init_state(0)
  manager.save(state, 0, checkpointing.run_identity(model.config, "t", None), force=True)
  manager.close()
  progress = Path(manager_dir) / "checkpoint_0" / "progress" / "metadata"
  saved = json.loads(progress.read_text())
  del saved[checkpointing.LAYOUT_KEY]  # as written before the T5X layout
  if label is not None:
    saved[checkpointing.LAYOUT_KEY] = label
  progress.write_text(json.dumps(saved))


@pytest.mark.slow
def test_old_checkpoints_resume_where_the_layout_is_unchanged_and_fail_clearly_otherwise(
    tmp_path):
  # The unscanned tiny model's second moments are stored alike before and after (all its
  # kernels are below min_dim_size_to_factor 128 either way): it resumes.
  model, trainer = _trainer(get_config("tiny"))
  assert trainer.optimizer.legacy_layout_changes() == []
  _save_without_layout(tmp_path / "same", trainer, model)
  manager = checkpointing.CheckpointManager(str(tmp_path / "same"))
  state, _ = manager.restore(0, trainer.abstract_state, trainer.state_shardings,
                             optimizer=trainer.optimizer)
  assert int(to_host(state.step)) == 0
  # Scanned, T5X factors the layer kernels by their logical rule at any size: refused.
  model, trainer = _trainer(get_config("tiny", scan_layers=True))
  _save_without_layout(tmp_path / "scanned", trainer, model)
  # (saved in the new layout, relabelled as old: the check is on the label, before any read)
  manager = checkpointing.CheckpointManager(str(tmp_path / "scanned"))
  with pytest.raises(CheckpointError, match=r"(?s)written before xltransfer stored Adafactor's "
                                            r"factored second moments in T5X's layout, and "
                                            r"18 parameters.*decoder/layers/encoder_decoder_"
                                            r"attention/out/kernel: rows \(\) columns \(\) -> "
                                            r"rows \(2,\) columns \(0,\).*Resuming would "
                                            r"misread its optimizer state"):
    manager.restore(0, trainer.abstract_state, trainer.state_shardings,
                    optimizer=trainer.optimizer)
  # A layout this version does not know (a newer one) is refused too.
  _save_without_layout(tmp_path / "future", trainer, model, label="t5x_v2")
  manager = checkpointing.CheckpointManager(str(tmp_path / "future"))
  with pytest.raises(CheckpointError, match="optimizer state layout 't5x_v2' is not this "):
    manager.restore(0, trainer.abstract_state, trainer.state_shardings,
                    optimizer=trainer.optimizer)


def test_state_with_rejects_an_unknown_optimizer_state():
  params = {"w": jnp.ones((4, 4))}
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  optimizer = opt_lib.Adafactor().create(learning_rate_schedule(), abstract,
                                         {"w": P("embed", "mlp")})
  with pytest.raises(TypeError, match="no rule to restore optimizer state"):
    optimizer.state_with((optax.ScaleByAdamState(0, {}, {}),), 1, {}, {}, {})
