"""Adafactor (T5X semantics, logical factoring) and the learning-rate schedules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from xltransfer.errors import ConfigError
from xltransfer.train import optimizer as opt_lib
from xltransfer.train import row_sparse
from xltransfer.train.schedules import learning_rate_schedule


def _reference_adafactor(param, grads, row_dims, col_dims, lr=0.01, decay_rate=0.8,
                         clip=1.0, eps1=1e-30, eps2=1e-3):
  """The Adafactor update (Shazeer & Stern 2018, as T5X applies it) in float64 numpy, for one
  [rows, columns] parameter: rows are dim 0, columns dim 1 when factored."""
  param = param.astype(np.float64)
  v_row, v_col, v = np.zeros(param.shape[0]), np.zeros(param.shape[1]), np.zeros(param.shape)
  for step, g in enumerate(grads):
    g = g.astype(np.float64)
    decay = 1.0 - (step + 1.0) ** (-decay_rate)
    g2 = g * g + eps1
    if row_dims:
      r = np.mean(g2, axis=col_dims)
      c = np.mean(g2, axis=row_dims)
      v_row = decay * v_row + (1 - decay) * r
      v_col = decay * v_col + (1 - decay) * c
      y = g / np.sqrt(np.outer(v_row, v_col) / np.mean(v_row))
    else:
      v = decay * v + (1 - decay) * g2
      y = g / np.sqrt(v)
    y = y / max(1.0, np.sqrt(np.mean(y * y)) / clip)
    scale = max(np.sqrt(np.mean(param * param)), eps2)
    param = param - lr * scale * y
  return param


def _run(params, axes, grads_seq, **adafactor_kwargs):
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  opt = opt_lib.Adafactor(**adafactor_kwargs).create(
      learning_rate_schedule("constant", 0.01), abstract, axes)
  state = opt.init(params)
  update = jax.jit(opt.update)
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state, opt


@pytest.mark.parametrize("factored", [True, False])
def test_matches_reference_update(factored):
  rng = np.random.default_rng(0)
  param = rng.normal(size=(8, 12)).astype(np.float32)
  grads = [rng.normal(size=(8, 12)).astype(np.float32) * s for s in (1.0, 3.0, 0.2)]
  params, _, _ = _run({"w": jnp.asarray(param)}, {"w": P("embed", "mlp")},
                      [{"w": jnp.asarray(g)} for g in grads],
                      min_dim_size_to_factor=1 if factored else 10**9)
  expected = _reference_adafactor(param, grads, (0,) if factored else (),
                                  (1,) if factored else ())
  assert np.abs(expected - param).max() > 1e-3  # the updates are not negligible
  np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("zero_axis", [0, 1])
def test_factored_update_with_rows_of_zero_gradient(zero_axis):
  """An embedding's gradient is zero outside the batch's tokens. Its zero entries get g^2 =
  0 (+ epsilon1 in the statistics only), so they contribute nothing to the clipping RMS, which
  the optimizer computes from g^2 and the factors rather than from the update itself: the
  float64 reference, which takes the RMS of the update, must agree, with clipping active."""
  rng = np.random.default_rng(3)
  param = rng.normal(size=(16, 12)).astype(np.float32)
  grads = []
  for scale in (1.0, 40.0, 0.5):
    g = rng.normal(size=(16, 12)).astype(np.float32) * scale
    zero = np.arange(g.shape[zero_axis]) % 3 != 0  # two rows (or columns) in three are zero
    g[zero if zero_axis == 0 else slice(None), zero if zero_axis == 1 else slice(None)] = 0.0
    grads.append(g)
  params, _, _ = _run({"w": jnp.asarray(param)}, {"w": P("embed", "mlp")},
                      [{"w": jnp.asarray(g)} for g in grads], min_dim_size_to_factor=1)
  expected = _reference_adafactor(param, grads, (0,), (1,))
  assert np.abs(expected - param).max() > 1e-3
  np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes", [P("vocab", "embed"), P("embed", "mlp")])
def test_row_sparse_update_matches_the_reference(axes):
  """A gradient given as some rows of its parameter (`row_ids`, as the trainer gives the
  token embedding's; `train/row_sparse.py`) updates as the dense gradient with zeros in every
  other row does: against the float64 reference, in both factor orientations (an embedding's
  rows are Adafactor's columns), with clipping active, ids out of range as padding, and rows
  that no step touches (their parameters must not move at all) or that one step skips (their
  statistics decay in between)."""
  rng = np.random.default_rng(5)
  param = rng.normal(size=(16, 12)).astype(np.float32)
  params = {"w": jnp.asarray(param)}
  _, _, opt = _run(params, {"w": axes}, [], min_dim_size_to_factor=1)
  assert opt.accepts_row_sparse(("w",))
  state = opt.init(params)
  update = jax.jit(opt.update)
  dense_grads = []
  for scale, rows in ((1.0, [0, 3, 4, 9]), (40.0, [3, 5, 11, 12]), (0.5, [0, 1, 3, 4])):
    g = rng.normal(size=(len(rows), 12)).astype(np.float32) * scale
    ids = np.array(rows + [16] * 2, np.int32)  # Two pad ids: out of range, zero rows.
    compact = np.concatenate([g, np.zeros((2, 12), np.float32)])
    updates, state = update({"w": jnp.asarray(compact)}, state, params,
                            row_ids={"w": jnp.asarray(ids)})
    assert updates["w"].shape == compact.shape
    params = row_sparse.apply_updates(params, updates, {"w": jnp.asarray(ids)})
    dense = np.zeros_like(param)
    dense[rows] = g
    dense_grads.append(dense)
  if opt.factorings["w"].row_dims == (0,):
    expected = _reference_adafactor(param, dense_grads, (0,), (1,))
  else:  # The reference factors dim 0 as rows: give it the transposes.
    expected = _reference_adafactor(param.T, [g.T for g in dense_grads], (0,), (1,)).T
  result = np.asarray(params["w"])
  untouched = [r for r in range(16) if r not in (0, 1, 3, 4, 5, 9, 11, 12)]
  np.testing.assert_array_equal(result[untouched], param[untouched])
  assert np.abs(expected - param).max() > 1e-3
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_row_sparse_gradients_only_where_the_update_stays_exact():
  """Momentum moves rows of zero gradient, and an unfactored second moment decays in every
  entry: neither takes a row-sparse gradient."""
  params = {"w": jnp.zeros((16, 12)), "b": jnp.zeros((12,))}
  axes = {"w": P("vocab", "embed"), "b": P("embed")}
  for kwargs, accepted in (({}, True), ({"momentum": 0.9}, False),
                           ({"factored": False}, False)):
    _, _, opt = _run(params, axes, [], min_dim_size_to_factor=1, **kwargs)
    assert opt.accepts_row_sparse(("w",)) is accepted, kwargs
    assert not opt.accepts_row_sparse(("b",))
    assert not opt.accepts_row_sparse(("missing",))


def _small_blocks(monkeypatch, rows_per_block, row_length):
  """Blocked statistics (`optimizer._blocked_factored_statistics`) for small test matrices:
  every 2-D factored parameter qualifies, read `rows_per_block` leading rows at a time."""
  monkeypatch.setattr(opt_lib, "_BLOCKED_MIN_BYTES", 0)
  monkeypatch.setattr(opt_lib, "_BLOCK_BYTES", 4 * row_length * rows_per_block)


def _update_has_scan(params, axes, grads, **kwargs):
  _, _, opt = _run(params, axes, [], **kwargs)
  state = opt.init(params)
  return "scan" in str(jax.make_jaxpr(opt.update)(grads, state, params))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_zero_rows", [False, True])
def test_blocked_statistics_match_the_reference(monkeypatch, transposed, with_zero_rows):
  """On a CPU a large factored matrix gets its statistics (row and column means of g^2, the
  clipping RMS, the parameter's RMS) from one blocked pass over g and the parameter. The
  update must be Adafactor's all the same: against the float64 reference, for a kernel whose
  leading dim is the row ([24, 40]) and an embedding-like one whose leading dim is the column
  ([40, 24]), with clipping active and with rows of zero gradient (an embedding's case)."""
  rng = np.random.default_rng(5)
  shape = (40, 24) if transposed else (24, 40)
  _small_blocks(monkeypatch, rows_per_block=8, row_length=shape[1])
  param = rng.normal(size=shape).astype(np.float32)
  grads = []
  for scale in (1.0, 40.0, 0.5):
    g = rng.normal(size=shape).astype(np.float32) * scale
    g[::5] *= 30.0  # heavy rows: the update's RMS exceeds the clipping threshold
    if with_zero_rows:
      g[np.arange(shape[0]) % 3 != 0] = 0.0
    grads.append(g)
  params = {"w": jnp.asarray(param)}
  axes = {"w": P("vocab", "embed") if transposed else P("embed", "vocab")}
  assert _update_has_scan(params, axes, {"w": jnp.asarray(grads[0])}, min_dim_size_to_factor=1)
  got, state, _ = _run(params, axes, [{"w": jnp.asarray(g)} for g in grads],
                       min_dim_size_to_factor=1)
  if transposed:  # The smaller dim (1) is the row: the reference takes rows as dim 0.
    expected = _reference_adafactor(param.T, [g.T for g in grads], (0,), (1,)).T
  else:
    expected = _reference_adafactor(param, grads, (0,), (1,))
  assert np.abs(expected - param).max() > 1e-3
  np.testing.assert_allclose(np.asarray(got["w"]), expected, rtol=1e-5, atol=1e-6)
  # The stored statistics are the plain path's (T5X's layout): v_row over the smaller dim.
  monkeypatch.setattr(opt_lib, "_BLOCKED_MIN_BYTES", 1 << 60)
  assert not _update_has_scan(params, axes, {"w": jnp.asarray(grads[0])},
                              min_dim_size_to_factor=1)
  plain, plain_state, _ = _run(params, axes, [{"w": jnp.asarray(g)} for g in grads],
                               min_dim_size_to_factor=1)
  np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(plain["w"]), rtol=1e-6, atol=1e-7)
  for blocked_slot, plain_slot in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state)):
    assert blocked_slot.shape == plain_slot.shape
    np.testing.assert_allclose(np.asarray(blocked_slot), np.asarray(plain_slot), rtol=1e-5)


def test_blocked_statistics_only_where_they_apply(monkeypatch):
  """Blocking is a CPU memory-traffic measure: on a TPU/GPU target (where the matrix may be
  sharded along the blocked dim) the statistics are the plain whole-matrix reductions; a
  matrix under the size threshold, or one whose leading dim splits only into tiny blocks,
  stays plain too."""
  params = {"w": jnp.ones((24, 40), jnp.float32)}
  axes = {"w": P("embed", "vocab")}
  grads = {"w": jnp.ones((24, 40), jnp.float32)}
  _small_blocks(monkeypatch, rows_per_block=8, row_length=40)
  assert _update_has_scan(params, axes, grads, min_dim_size_to_factor=1)
  assert not _update_has_scan(params, axes, grads, min_dim_size_to_factor=1, factored=False)
  monkeypatch.setattr(opt_lib, "target_platform", lambda: "tpu")
  assert not _update_has_scan(params, axes, grads, min_dim_size_to_factor=1)
  # mT5's vocabulary matrices at the real thresholds: 4 rows of 250112, 1954 rows of 512
  # (250112 = 2^8 x 977: 1954 is its largest divisor within 4 MiB of rows).
  monkeypatch.undo()
  assert opt_lib._leading_block_size((512, 250112)) == 4
  assert opt_lib._leading_block_size((250112, 512)) == 1954
  assert opt_lib._leading_block_size((512, 1024)) == 0  # 2 MiB: cache-sized already
  assert opt_lib._leading_block_size((10007, 4096)) == 0  # prime: blocks of one 16 KiB row
  assert opt_lib._leading_block_size((4, 512, 8192)) == 0  # scanned layers: not blocked


@pytest.mark.parametrize("shape,dims", [((6, 40), (0,)), ((6, 40), (1,)), ((3, 4, 5), (0, 1)),
                                         ((3, 4, 5), (1,)), ((3, 4, 5), (0, 2)), ((7,), (0,))])
def test_mean_over_is_the_mean(shape, dims):
  # Leading axes go through a matrix-vector product (fast on XLA:CPU); the rest through
  # jnp.mean. Either way the statistic is the mean, to float32 rounding.
  x = jax.random.uniform(jax.random.PRNGKey(0), shape, jnp.float32, 0.0, 3.0)
  got = jax.jit(opt_lib._mean_over, static_argnums=1)(x, dims)
  np.testing.assert_allclose(np.asarray(got), np.mean(np.asarray(x, np.float64), axis=dims),
                             rtol=1e-6)
  assert got.shape == np.mean(np.asarray(x), axis=dims).shape


def test_factoring_is_t5x_s():
  """T5X `adafactor.py` with standard_logical_factor_rules (its mT5 configs): rank <= 2 without
  a batch axis -> the size heuristic `_factored_dims` (logical axes ignored), else the rule.
  Expected shapes are those of T5X's own adafactor_test.py where it has the case."""
  rules = opt_lib.STANDARD_LOGICAL_FACTOR_RULES
  rule = lambda shape, axes, min_dim=128, **kw: opt_lib.factoring_for(shape, axes, rules,
                                                                     min_dim, **kw)
  # The smaller dim is the row whatever its logical name: mT5-small's q and o kernels.
  q = rule((512, 384), ("embed", "joined_kv"))
  assert (q.row_dims, q.col_dims, q.batch_dims) == ((1,), (0,), ())
  assert q.slot_shapes((512, 384)) == {"v_row": (384,), "v_col": (512,), "v": (1,)}
  o = rule((384, 512), ("joined_kv", "embed"))
  assert (o.row_dims, o.col_dims) == ((0,), (1,))
  assert (rule((256, 512), ("vocab", "embed")).row_dims) == (0,)
  assert (rule((250112, 512), ("vocab", "embed")).row_dims) == (1,)
  # adafactor_test.test_2D_simple / test_2D_ignore_specified_factor_rule: v_row (16,), v_col (24,).
  assert rule((24, 16), ("embed", "mlp"), 8).slot_shapes((24, 16)) == {
      "v_row": (16,), "v_col": (24,), "v": (1,)}
  # test_2D_simple_nofactor and test_factorizes: the smaller dim decides; ties keep dim 0 as row.
  assert not rule((24, 16), ("embed", "mlp"), 32).factored
  assert not rule((31, 64), ("embed", "mlp"), 32).factored
  square = rule((64, 64), ("mlp", "embed"), 32)
  assert (square.row_dims, square.col_dims) == ((0,), (1,))
  assert not rule((512,), ("embed",)).factored
  # Even an axis the rules leave unfactored: rank 2 goes by size alone.
  assert not rule((6, 32), ("heads", "relpos_buckets")).factored
  assert rule((6, 32), ("heads", "relpos_buckets"), 4).factored
  # test_3D_simple: rule (COL, BATCH, ROW) on (24, 4, 16): v_col (24, 4), v_row (4, 16).
  three = rule((24, 4, 16), ("mlp", "layers", "embed"), 8)
  assert three.slot_shapes((24, 4, 16)) == {"v_row": (4, 16), "v_col": (24, 4), "v": (1,)}
  scanned = rule((512, 4, 1024), ("embed", "layers", "mlp"))
  assert (scanned.row_dims, scanned.col_dims, scanned.batch_dims) == ((0,), (2,), (1,))
  assert scanned.averaging_dims == (0, 2)
  # The rule path has no size threshold: a scanned tiny kernel is factored (T5X _parse_rule).
  assert rule((8, 2, 16), ("embed", "layers", "mlp")).factored
  norm = rule((512, 4), ("embed", "layers"))
  assert not norm.factored and norm.batch_dims == (1,)
  assert not rule((512, 4, 1024), ("embed", "layers", "mlp"), factored=False).factored
  with pytest.raises(ConfigError, match="rows, columns and an unfactored axis"):
    rule((8, 32, 16), ("embed", "relpos_buckets", "mlp"), path="['x']")
  with pytest.raises(ConfigError, match="no Adafactor factor rule for logical axis 'bogus'"):
    rule((4, 4), ("bogus", "embed"), 1, path="['x']")


def test_legacy_factoring_is_the_logical_one():
  """Checkpoints written before the T5X layout: rows from the logical axes, size threshold on
  every rank (kept to recognise them, see checkpointing.check_optimizer_layout)."""
  rules = opt_lib.STANDARD_LOGICAL_FACTOR_RULES
  old = opt_lib.factoring_before_t5x_layout((512, 384), ("embed", "joined_kv"), rules, 128)
  assert (old.row_dims, old.col_dims) == ((0,), (1,))
  assert not opt_lib.factoring_before_t5x_layout((8, 2, 16), ("embed", "layers", "mlp"),
                                                 rules, 128).factored


def test_convert_second_moment_between_layouts():
  rng = np.random.default_rng(3)
  v = rng.random((6, 4)).astype(np.float32) + 0.1
  rows0 = opt_lib.Factoring((0,), (1,), (), 2)
  rows1 = opt_lib.Factoring((1,), (0,), (), 2)
  full = opt_lib.Factoring((), (), (), 2)
  from_full = opt_lib.convert_second_moment({"v": v}, full, rows0, (6, 4))
  np.testing.assert_allclose(from_full["v_row"], v.mean(axis=1))
  np.testing.assert_allclose(from_full["v_col"], v.mean(axis=0))
  swapped = opt_lib.convert_second_moment(from_full, rows0, rows1, (6, 4))
  np.testing.assert_array_equal(swapped["v_row"], from_full["v_col"])
  np.testing.assert_array_equal(swapped["v_col"], from_full["v_row"])
  with pytest.raises(ValueError, match="cannot be recovered"):
    opt_lib.convert_second_moment(from_full, rows0, full, (6, 4), "w")


def test_scanned_parameter_updates_like_its_layers():
  """A [embed, layers, mlp] parameter gets per-layer statistics, as its unscanned layers."""
  rng = np.random.default_rng(1)
  layers = [rng.normal(size=(16, 8)).astype(np.float32) * (i + 1) for i in range(3)]
  grads = [[rng.normal(size=(16, 8)).astype(np.float32) * (i + 1) for i in range(3)]
           for _ in range(3)]
  unscanned = {f"layers_{i}": jnp.asarray(w) for i, w in enumerate(layers)}
  unscanned_axes = {f"layers_{i}": P("embed", "mlp") for i in range(3)}
  out_u, _, _ = _run(unscanned, unscanned_axes,
                     [{f"layers_{i}": jnp.asarray(g[i]) for i in range(3)} for g in grads],
                     min_dim_size_to_factor=4)
  scanned = {"layers": jnp.stack([jnp.asarray(w) for w in layers], axis=1)}
  out_s, _, _ = _run(scanned, {"layers": P("embed", "layers", "mlp")},
                     [{"layers": jnp.stack([jnp.asarray(x) for x in g], axis=1)} for g in grads],
                     min_dim_size_to_factor=4)
  for i in range(3):
    np.testing.assert_allclose(np.asarray(out_s["layers"][:, i]),
                               np.asarray(out_u[f"layers_{i}"]), rtol=1e-6, atol=1e-7)


def test_momentum_is_an_ema_of_the_scaled_update():
  param = {"w": jnp.ones((4, 4), jnp.float32)}
  axes = {"w": P("embed", "mlp")}
  grads = [{"w": jnp.full((4, 4), 0.5, jnp.float32)}] * 2
  plain, _, _ = _run(param, axes, grads[:1])
  with_momentum, state, _ = _run(param, axes, grads[:1], momentum=0.9)
  step_plain = np.asarray(plain["w"]) - 1.0
  # With beta1 = 0.9 the first update is (1 - 0.9) times the plain one.
  np.testing.assert_allclose(np.asarray(with_momentum["w"]) - 1.0, 0.1 * step_plain, rtol=1e-4)
  assert isinstance(state[-1], optax.EmaState)


def test_state_logical_axes_match_state_shapes():
  params = {"emb": jnp.zeros((256, 32)), "mlp": {"wi": jnp.zeros((32, 200))},
            "scale": jnp.zeros((32,))}
  axes = {"emb": P("vocab", "embed"), "mlp": {"wi": P("embed", "mlp")}, "scale": P("embed")}
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  opt = opt_lib.Adafactor(min_dim_size_to_factor=16, momentum=0.9).create(
      learning_rate_schedule(), abstract, axes)
  state = jax.eval_shape(opt.init, abstract)
  state_axes = opt.state_logical_axes(state, axes)
  leaves = jax.tree.leaves(state)
  specs = jax.tree.leaves(state_axes, is_leaf=lambda x: isinstance(x, P))
  assert len(leaves) == len(specs)
  for leaf, spec in zip(leaves, specs):
    assert len(spec) in (0, len(leaf.shape)) or spec == P(None), (leaf.shape, spec)
    assert len(spec) <= len(leaf.shape)
  factored = state[0]
  assert factored.v_row["emb"].shape == (32,) and state_axes[0].v_row["emb"] == P("embed")
  assert factored.v_col["emb"].shape == (256,) and state_axes[0].v_col["emb"] == P("vocab")
  assert state_axes[-1].ema["mlp"]["wi"] == P("embed", "mlp")


def test_schedules():
  steps = jnp.array([0, 5, 10, 100, 400])
  np.testing.assert_allclose(learning_rate_schedule("constant", 1e-3)(steps), [1e-3] * 5)
  np.testing.assert_allclose(learning_rate_schedule("linear_warmup", 1.0, warmup_steps=10)(steps),
                             [0.0, 0.5, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(learning_rate_schedule("rsqrt_decay", 1.0, warmup_steps=100)(steps),
                             [0.1, 0.1, 0.1, 0.1, 0.05], rtol=1e-6)
  cosine = learning_rate_schedule("cosine", 1.0, warmup_steps=10, decay_steps=100,
                                  min_learning_rate=0.1)(jnp.array([5, 10, 60, 110, 500]))
  np.testing.assert_allclose(cosine, [0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-5)
  offset = learning_rate_schedule("rsqrt_decay", 1.0, warmup_steps=100, step_offset=1000)
  np.testing.assert_allclose(offset(jnp.array([1000, 1400])), [0.1, 0.05], rtol=1e-6)
  with pytest.raises(ConfigError, match="unknown learning_rate_schedule.name 'linear'"):
    learning_rate_schedule("linear")


def _docstring_learning_rate(name, base, warmup, decay, floor, offset, step):
  """The formulas of `learning_rate_schedule`'s docstring in float64 numpy."""
  step = max(step - offset, 0)
  if name == "constant":
    lr = base
  elif name == "linear_warmup":
    lr = base * min(1.0, step / warmup)
  elif name == "rsqrt_decay":
    lr = base / np.sqrt(max(step, warmup))
  elif warmup > 0 and step < warmup:
    return base * step / warmup
  else:
    progress = min(max((step - warmup) / decay, 0.0), 1.0)
    return floor + 0.5 * (base - floor) * (1.0 + np.cos(np.pi * progress))
  return max(lr, floor)


@pytest.mark.parametrize("name,base,warmup,decay,floor,offset", [
    ("constant", 1e-3, 0, 0, 0.0, 0),
    ("constant", 1e-4, 0, 0, 1e-3, 0),  # the floor lifts a base below it
    ("linear_warmup", 1.0, 10, 0, 0.0, 0),
    ("linear_warmup", 3e-4, 7, 0, 1e-5, 1000),
    ("rsqrt_decay", 1.0, 100, 0, 0.0, 0),
    ("rsqrt_decay", 1.0, 10_000, 0, 2e-3, 1_000_000),
    ("cosine", 1.0, 10, 100, 0.1, 0),
    ("cosine", 1e-3, 0, 50, 1e-5, 0),  # no warmup: cosine from step 0
    ("cosine", 5e-4, 8, 30, 0.0, 1_000_000),
    ("cosine", 0.0, 4, 20, 1e-3, 0),  # base 0: from 0 up to min (optax's alpha form gives 0)
])
def test_schedules_follow_their_formulas_at_every_step(name, base, warmup, decay, floor, offset):
  schedule = learning_rate_schedule(name, base, warmup_steps=warmup, decay_steps=decay,
                                    min_learning_rate=floor, step_offset=offset)
  # Before the offset, across warmup and decay (and their boundaries), and long after.
  edges = [offset + e for e in (0, 1, warmup - 1, warmup, warmup + 1, warmup + decay - 1,
                                warmup + decay, warmup + decay + 1)]
  steps = sorted({s for s in list(range(max(offset - 5, 0), offset + 3 * (warmup + decay) + 40))
                  + edges + [offset + 123_456] if s >= 0})
  expected = [_docstring_learning_rate(name, base, warmup, decay, floor, offset, s)
              for s in steps]
  got = schedule(jnp.asarray(steps, jnp.int32))
  assert got.dtype == jnp.float32 and got.shape == (len(steps),)
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-9)
  # Inside jit with the optimizer's int32 count (as the train step calls it), one step at a time.
  jitted = jax.jit(schedule)
  for s in (steps[0], offset, offset + warmup, steps[-1]):
    value = jitted(jnp.int32(s))
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, _docstring_learning_rate(
        name, base, warmup, decay, floor, offset, s), rtol=2e-6, atol=1e-9)


def test_schedule_configuration_errors():
  with pytest.raises(ConfigError, match="'linear_warmup' needs warmup_steps > 0"):
    learning_rate_schedule("linear_warmup", 1.0)
  with pytest.raises(ConfigError, match="'rsqrt_decay' needs warmup_steps > 0"):
    learning_rate_schedule("rsqrt_decay", 1.0, warmup_steps=0)
  with pytest.raises(ConfigError, match="'cosine' needs decay_steps > 0"):
    learning_rate_schedule("cosine", 1.0, warmup_steps=10)
