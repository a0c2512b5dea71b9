"""Adafactor as T5X configures it, as an optax `GradientTransformation`.

Second moments are factored exactly as T5X's `adafactor.Adafactor` with
`logical_factor_rules = standard_logical_factor_rules()` (its mT5/T5.1.1 configs), so the
stored `v_row`/`v_col` of a T5X checkpoint map 1:1 onto ours (`factoring_for`):
  * a parameter of rank <= 2 without a batch axis (every unscanned kernel) ignores its logical
    axes, as T5X's `_parse_rule` falls back to `_factored_dims`: the smaller dimension is the
    row (v_row keeps it), the larger the column (ties: dimension 0 is the row), and it is
    factored only if the smaller one has at least `min_dim_size_to_factor` entries;
  * any other parameter (scanned [embed, layers, mlp] ...) is factored along its logical axes
    (`embed` rows, `vocab`/`mlp`/`joined_kv`/`heads`/`kv` columns, `layers` a batch axis),
    whatever its sizes: T5X applies no `min_dim_size_to_factor` on this path.
Row and column means are the same statistics whichever dim is called the row, so where a
scanned layer and its unscanned twin are both factored (every mT5 size) their updates are
equal up to float rounding and only where v_row/v_col are stored differs, as in T5X. A scanned
kernel under `min_dim_size_to_factor` is factored while its unscanned twin keeps a full v (as in
T5X), so for such small models scanning changes the update. optax covers the rest of the
chain: the learning rate schedule, momentum (an EMA of the scaled update, as T5X's beta1, with
the opposite sign: optax's updates are negative) and optional global-norm clipping.

Per parameter (T5X `adafactor.Adafactor.apply_param_gradient`):
  decay      = 1 - (count - step_offset + 1) ** -decay_rate
  v          = decay * v + (1 - decay) * (g² + ε1)          (factored: row and column means)
  y          = g / sqrt(v), clipped to RMS <= clipping_threshold
  update     = -lr * max(ε2, RMS(param)) * y                 (multiply_by_parameter_scale)
"""
import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from xltransfer.errors import ConfigError
from xltransfer.model.layers import target_platform

ROW, COLUMN, BATCH, NONE = "row", "column", "batch", "none"

# T5X `adafactor.standard_logical_factor_rules`: which logical axes are rows, columns or
# batch dimensions of the factored second moment (plus axes of ours T5X's list lacks).
STANDARD_LOGICAL_FACTOR_RULES = {
    "vocab": COLUMN, "embed": ROW, "mlp": COLUMN, "heads": COLUMN, "kv": COLUMN,
    "joined_kv": COLUMN, "relpos_buckets": NONE, "layers": BATCH, "stack": BATCH,
    "q_wi_fused": COLUMN, "o_wo_fused": COLUMN, "multiquery_heads": COLUMN,
    "kv_fused": COLUMN, "layer_norm_scale": NONE, "mlp_activations": COLUMN,
    # Not in T5X's list (they never name a T5X parameter axis).
    "abspos_buckets": NONE, "batch": BATCH, "length": NONE,
}

# How `progress` of our own checkpoints names the layout of their factored second moments;
# checkpoints without it were written with `factoring_before_t5x_layout`.
STATE_LAYOUT = "t5x"


@dataclasses.dataclass(frozen=True)
class Factoring:
  """How one parameter's second moment is stored.

  `row_dims`/`col_dims` empty means unfactored. v_row keeps every dimension but the column
  dims (it is the mean over them), v_col every dimension but the row dims. Statistics
  (parameter scale, update RMS) are averaged over every dimension except `batch_dims`.
  """
  row_dims: Tuple[int, ...]
  col_dims: Tuple[int, ...]
  batch_dims: Tuple[int, ...]
  ndim: int

  @property
  def factored(self) -> bool:
    return bool(self.row_dims) and bool(self.col_dims)

  @property
  def averaging_dims(self) -> Tuple[int, ...]:
    return tuple(d for d in range(self.ndim) if d not in self.batch_dims)

  def slot_shapes(self, shape) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the stored v_row, v_col and v (T5X stores (1,) for an unused slot)."""
    shape = tuple(int(n) for n in shape)
    if self.factored:
      return {"v_row": _drop_dims(shape, self.col_dims),
              "v_col": _drop_dims(shape, self.row_dims), "v": (1,)}
    return {"v_row": (1,), "v_col": (1,), "v": shape}

  def slot_axis(self, slot: str, dim: int) -> int:
    """Where parameter dimension `dim` sits in `slot` (which must keep it)."""
    dropped = {"v_row": self.col_dims, "v_col": self.row_dims, "v": ()}[slot]
    if dim in dropped:
      raise ValueError(f"{slot} of {self} does not keep dimension {dim}")
    return dim - sum(d < dim for d in dropped)

  def without_dim(self, dim: int) -> "Factoring":
    """The factoring of one slice along `dim` (a scanned parameter's layer)."""
    def shift(dims):
      return tuple(d - (d > dim) for d in dims if d != dim)
    return Factoring(shift(self.row_dims), shift(self.col_dims), shift(self.batch_dims),
                     self.ndim - 1)


UNFACTORED = ()


def _heuristic_factoring(shape, min_dim_size_to_factor: int) -> Tuple[Tuple[int, ...], ...]:
  """T5X `Adafactor._factored_dims`: the two largest dims, the smaller as the row."""
  if len(shape) < 2:
    return UNFACTORED
  # A stable sort, as numpy's for T5X's two dims: equal sizes keep dim 0 as the row.
  order = np.argsort(np.asarray(shape), kind="stable")
  if shape[order[-2]] < min_dim_size_to_factor:
    return UNFACTORED
  return (int(order[-2]),), (int(order[-1]),)


def _axis_kinds(shape, logical_axes, rules, path):
  ndim = len(shape)
  if logical_axes is None or len(logical_axes) != ndim:
    raise ConfigError(f"parameter {path} of shape {tuple(shape)} has logical axes "
                      f"{logical_axes}; Adafactor needs one logical name per dimension")
  kinds = []
  for name in logical_axes:
    if name not in rules:
      raise ConfigError(f"no Adafactor factor rule for logical axis {name!r} of parameter "
                        f"{path}; add it to adafactor.logical_factor_rules")
    kinds.append(rules[name])
  return kinds


def factoring_for(shape, logical_axes, rules: Dict[str, str], min_dim_size_to_factor: int,
                  factored: bool = True, path: str = "") -> Factoring:
  """The factoring T5X's Adafactor (with logical factor rules) gives a parameter.

  T5X `Adafactor.set_param_axes` turns the logical axes into a rule (a rule with rows and
  columns and an unfactored axis is an error; one lacking rows or columns factors nothing),
  then `_parse_rule` ignores the rule for rank <= 2 parameters without a batch axis and uses
  the size heuristic `_factored_dims`. Otherwise the rule decides, with no size threshold.
  `factored=False` stores a full second moment for every parameter; unlike T5X we still
  keep the batch (layer) axes out of the averages, so scanning never changes the update.
  """
  kinds = _axis_kinds(shape, logical_axes, rules, path)
  ndim = len(shape)
  batch_dims = tuple(i for i, k in enumerate(kinds) if k == BATCH)
  if not factored:
    return Factoring((), (), batch_dims, ndim)
  if ROW in kinds and COLUMN in kinds and NONE in kinds:
    raise ConfigError(
        f"parameter {path}: logical axes {tuple(logical_axes)} give Adafactor rows, columns "
        f"and an unfactored axis ({tuple(kinds)}); T5X rejects this incomplete factor rule. "
        "Fix adafactor.logical_factor_rules")
  if ndim <= 2 and not batch_dims:
    dims = _heuristic_factoring(tuple(int(n) for n in shape), min_dim_size_to_factor)
    return Factoring(*(dims or ((), ())), (), ndim)
  if ROW not in kinds or COLUMN not in kinds:
    return Factoring((), (), batch_dims, ndim)
  return Factoring(tuple(i for i, k in enumerate(kinds) if k == ROW),
                   tuple(i for i, k in enumerate(kinds) if k == COLUMN), batch_dims, ndim)


def factoring_before_t5x_layout(shape, logical_axes, rules: Dict[str, str],
                                min_dim_size_to_factor: int, factored: bool = True,
                                path: str = "") -> Factoring:
  """How xltransfer factored before it followed T5X's layout (checkpoints whose `progress`
  has no `optimizer_state_layout`): rows and columns from the logical axes for every rank,
  factored when the smaller of the two has at least `min_dim_size_to_factor` entries."""
  kinds = _axis_kinds(shape, logical_axes, rules, path)
  batch_dims = tuple(i for i, k in enumerate(kinds) if k == BATCH)
  row_dims = tuple(i for i, k in enumerate(kinds) if k == ROW)
  col_dims = tuple(i for i, k in enumerate(kinds) if k == COLUMN)
  big_enough = bool(row_dims) and bool(col_dims) and min(
      int(np.prod([shape[d] for d in row_dims])),
      int(np.prod([shape[d] for d in col_dims]))) >= min_dim_size_to_factor
  if not (factored and big_enough):
    row_dims, col_dims = (), ()
  return Factoring(row_dims, col_dims, batch_dims, len(shape))


def convert_second_moment(stored: Dict[str, np.ndarray], stored_factoring: Factoring,
                          factoring: Factoring, shape, name: str = "") -> Dict[str, np.ndarray]:
  """Re-expresses one parameter's stored second moment (v_row, v_col, v) in `factoring`.

  Exact whenever possible: the same or swapped row/column dims map slot to slot, and a full
  v gives any factoring's row/column means (v is a linear EMA of g² + ε1, so its means are
  the EMAs of the means). A factored moment cannot become a full one: that raises ValueError.
  """
  placeholder = np.zeros((1,), np.float32)
  if not stored_factoring.factored:
    v = np.asarray(stored["v"], np.float32)
    if not factoring.factored:
      return {"v_row": placeholder, "v_col": placeholder, "v": v}
    return {"v_row": v.mean(axis=factoring.col_dims), "v_col": v.mean(axis=factoring.row_dims),
            "v": placeholder}
  if not factoring.factored:
    raise ValueError(f"{name}: the stored second moment of shape {tuple(shape)} is factored "
                     f"(v_row {np.shape(stored['v_row'])}, v_col {np.shape(stored['v_col'])}) "
                     "but this optimizer keeps it whole; a full v cannot be recovered")
  # Each stored factor is the mean over one set of dims.
  means_over = {frozenset(stored_factoring.col_dims): stored["v_row"],
                frozenset(stored_factoring.row_dims): stored["v_col"]}
  out = {"v": placeholder}
  for slot, over in (("v_row", factoring.col_dims), ("v_col", factoring.row_dims)):
    if frozenset(over) not in means_over:
      raise ValueError(f"{name}: the stored second moment is factored over rows "
                       f"{stored_factoring.row_dims} / columns {stored_factoring.col_dims}; "
                       f"this optimizer's {slot} needs the mean over dims {over}")
    out[slot] = np.asarray(means_over[frozenset(over)], np.float32)
  return out


class FactoredRmsState(NamedTuple):
  count: jax.Array
  v_row: Any  # per parameter: mean over column dims; shape (1,) when unfactored
  v_col: Any  # per parameter: mean over row dims; shape (1,) when unfactored
  v: Any      # per parameter: full second moment; shape (1,) when factored


def _drop_dims(shape, dims):
  return tuple(s for i, s in enumerate(shape) if i not in dims)


def _mean_over(x, dims: Tuple[int, ...]):
  """`jnp.mean(x, axis=dims)`; over leading axes, as a matrix-vector product.

  XLA:CPU's library reduction walks a reduction over leading axes (an [embed, vocab] kernel's
  column statistic) at a fraction of memory speed: with mT5's 512 x 250k output layer the
  mT5-small bf16 train step took 4.6 s on 2 CPU cores, 3.2 s with this. As a product with a
  vector of 1/n (float32 at full precision) it streams the rows; the result differs only in
  summation order.
  """
  dims = tuple(sorted(dims))
  if not dims or dims != tuple(range(len(dims))) or len(dims) == x.ndim:
    return jnp.mean(x, axis=dims)
  count = int(np.prod([x.shape[d] for d in dims]))
  weights = jnp.full((count,), 1.0 / count, x.dtype)
  return jnp.tensordot(weights, x.reshape((count,) + x.shape[len(dims):]), axes=1,
                       precision=jax.lax.Precision.HIGHEST)


def _factored_mean_square(grad_sqr, row_factor, col_factor, dims):
  """mean((g * r * c)^2) over `dims`, as mean(g^2 * r^2 * c^2).

  The same value up to float rounding, but computed from g^2, which the factored statistics
  have already written out: XLA:CPU hands this reduction to its library with the elementwise
  product fused in, while y = g * r * c as a separate reduction's input was written out as an
  array of its own and read back (two passes over a 512 x 250k kernel, besides the one here).
  """
  return jnp.mean(grad_sqr * jnp.square(row_factor) * jnp.square(col_factor), axis=dims,
                  keepdims=True)


# A factored matrix at least this large (float32 bytes) is read in blocks of about
# `_BLOCK_BYTES` on a CPU (`_blocked_factored_statistics`): larger than the caches, where each
# separate pass over it costs a trip to memory.
_BLOCKED_MIN_BYTES = 64 << 20
_BLOCK_BYTES = 4 << 20


def _leading_block_size(shape) -> int:
  """Rows of `shape` per block for `_blocked_factored_statistics`: the largest divisor of the
  leading dimension whose block fits `_BLOCK_BYTES`, or 0 where blocking does not apply (too
  small, or blocks of under 1/64 of the target size: too many loop iterations)."""
  if len(shape) != 2 or 4 * shape[0] * shape[1] < _BLOCKED_MIN_BYTES:
    return 0
  row_bytes = 4 * shape[1]
  most = max(_BLOCK_BYTES // row_bytes, 1)
  size = max(d for d in range(1, min(most, shape[0]) + 1) if shape[0] % d == 0)
  return size if size * row_bytes * 64 >= _BLOCK_BYTES else 0


def _blocked_factored_statistics(grad, param, v_leading_side, decay, mixing, epsilon1,
                                 block: int, need_param_sum: bool):
  """A 2-D factored parameter's Adafactor statistics in one pass over its gradient (and
  parameter), reading `block` leading rows at a time while they are in cache.

  For grad [A, B]: the mean of g^2 over B of each leading row a is complete within its block;
  the v it gives (`v_leading_side` is that v's old value, [A]) is decayed here so that each
  block also adds its rows' g^2 / v_new(a) to W[b]. Returns (the new [A] v, the sums over A
  of g^2 [B], W [B], the sum of param^2 or None). With the B-side v from those sums, the mean
  of y^2 = g^2 r^2 c^2 over the matrix is (row_mean *) sum_b W[b] / v_B(b) / (A B): the
  clipping RMS without a second pass (see `scale_by_factored_rms`).

  Against separate whole-matrix passes (g^2 written out for the column statistic's product
  with a vector of ones, read back for it, for the row statistic and for the clipping RMS, then
  the parameter for its scale: 6 passes of 512 MB for mT5's [512, 250112] output kernel),
  this reads g and param once each.
  """
  rows, cols = grad.shape
  ones = jnp.ones((1, block), jnp.float32)

  def body(carry, index):
    sums, weighted, param_sum = carry
    start = index * block
    g = jax.lax.dynamic_slice_in_dim(grad, start, block, 0)
    g_sqr = g * g
    v_new = (decay * jax.lax.dynamic_slice_in_dim(v_leading_side, start, block, 0)
             + mixing * (jnp.mean(g_sqr, axis=1) + epsilon1))
    # Sums over the block's rows as one small product (XLA:CPU's reduction over a leading
    # axis walks it slowly); float32 at full precision.
    both = jnp.dot(jnp.concatenate([ones, (1.0 / v_new)[None]], axis=0), g_sqr,
                   precision=jax.lax.Precision.HIGHEST)
    if need_param_sum:
      p = jax.lax.dynamic_slice_in_dim(param, start, block, 0).astype(jnp.float32)
      param_sum = param_sum + jnp.sum(p * p)
    return (sums + both[0], weighted + both[1], param_sum), v_new

  zeros = jnp.zeros((cols,), jnp.float32)
  (sums, weighted, param_sum), v_new = jax.lax.scan(
      body, (zeros, zeros, jnp.zeros((), jnp.float32)), jnp.arange(rows // block))
  return v_new.reshape(rows), sums, weighted, (param_sum if need_param_sum else None)


def scale_by_factored_rms(factorings, decay_rate: float = 0.8, step_offset: int = 0,
                          epsilon1: float = 1e-30, epsilon2: float = 1e-3,
                          clipping_threshold: Optional[float] = 1.0,
                          multiply_by_parameter_scale: bool = True
                          ) -> optax.GradientTransformation:
  """The Adafactor preconditioner, update clipping and parameter scaling (no learning rate)."""

  def init_fn(params):
    def init_one(param, f: Factoring):
      placeholder = jnp.zeros((1,), jnp.float32)
      if f.factored:
        return (jnp.zeros(_drop_dims(param.shape, f.col_dims), jnp.float32),
                jnp.zeros(_drop_dims(param.shape, f.row_dims), jnp.float32), placeholder)
      return placeholder, placeholder, jnp.zeros(param.shape, jnp.float32)

    per_param = jax.tree.map(init_one, params, factorings)
    treedef = jax.tree.structure(params)
    v_row, v_col, v = (jax.tree.unflatten(treedef, [t[i] for t in treedef.flatten_up_to(per_param)])
                       for i in range(3))
    return FactoredRmsState(jnp.zeros([], jnp.int32), v_row, v_col, v)

  def update_fn(updates, state, params=None, row_ids=None, **unused_extra_args):
    """`row_ids`: None, or a tree of the params' structure holding None or, where the
    gradient holds only some rows of its parameter (`train/row_sparse.py`), those rows' ids
    [n] (ids out of range: rows of zero gradient); the update there holds those rows only."""
    if multiply_by_parameter_scale and params is None:
      raise ValueError("multiply_by_parameter_scale needs the params passed to update()")
    step = state.count.astype(jnp.float32) - step_offset
    decay = 1.0 - jnp.power(step + 1.0, -decay_rate)
    mixing = 1.0 - decay

    def update_one(grad, param, v_row, v_col, v, f: Factoring, ids):
      grad = grad.astype(jnp.float32)
      avg = f.averaging_dims
      param_mean_square = None
      block = _leading_block_size(grad.shape) if f.factored else 0
      if ids is not None:
        if not (f.factored and grad.ndim == 2):
          raise ValueError(f"a row-sparse gradient needs a factored 2-D parameter, got {f}")
        # Only the rows at `ids`; every other row of the parameter has zero gradient, so its
        # leading-side statistic is decay * v + mixing * epsilon1 and its update is zero.
        leading_is_row = f.row_dims == (0,)
        v_leading, v_trailing = (v_row, v_col) if leading_is_row else (v_col, v_row)
        grad_sqr = grad * grad
        at_ids = lambda x: x.at[ids].get(mode="fill", fill_value=0.0)
        touched = decay * at_ids(v_leading) + mixing * (jnp.mean(grad_sqr, axis=1) + epsilon1)
        new_v_leading = (decay * v_leading + mixing * epsilon1).at[ids].set(touched, mode="drop")
        new_v_trailing = decay * v_trailing + mixing * (
            jnp.sum(grad_sqr, axis=0) / param.shape[0] + epsilon1)
        new_v_row, new_v_col = ((new_v_leading, new_v_trailing) if leading_is_row
                                else (new_v_trailing, new_v_leading))
        row_mean = jnp.mean(new_v_row)
        row_factor = jax.lax.rsqrt(new_v_row / row_mean)
        col_factor = jax.lax.rsqrt(new_v_col)
        if leading_is_row:
          y = grad * at_ids(row_factor)[:, None] * col_factor[None, :]
        else:
          y = grad * row_factor[None, :] * at_ids(col_factor)[:, None]
        y_mean_square = lambda: jnp.sum(y * y) / param.size
        new_v = v
      elif block and target_platform() == "cpu":
        # One blocked pass for the statistics (see `_blocked_factored_statistics`); the
        # update itself stays one elementwise expression, which XLA fuses with the step's
        # parameter update.
        leading_is_row = f.row_dims == (0,)
        v_leading, v_trailing = (v_row, v_col) if leading_is_row else (v_col, v_row)
        need_param_sum = multiply_by_parameter_scale
        new_v_leading, sums, weighted, param_sum = _blocked_factored_statistics(
            grad, param, v_leading, decay, mixing, epsilon1, block, need_param_sum)
        new_v_trailing = decay * v_trailing + mixing * (sums / grad.shape[0] + epsilon1)
        new_v_row, new_v_col = ((new_v_leading, new_v_trailing) if leading_is_row
                                else (new_v_trailing, new_v_leading))
        row_mean = jnp.mean(new_v_row)
        row_factor = jnp.expand_dims(jax.lax.rsqrt(new_v_row / row_mean), f.col_dims)
        col_factor = jnp.expand_dims(jax.lax.rsqrt(new_v_col), f.row_dims)
        y = grad * row_factor * col_factor
        # sum_ab g^2 r_a^2 c_b^2 with r^2 = row_mean / v_row, c^2 = 1 / v_col: the blocked pass
        # summed g^2 / v(leading) over the leading rows; the trailing v remains.
        mean_square = row_mean * jnp.sum(weighted / new_v_trailing) / grad.size
        y_mean_square = lambda: mean_square
        if need_param_sum:
          param_mean_square = param_sum / grad.size
        new_v = v
      elif f.factored:
        # Means of g^2, plus epsilon1: the means of g^2 + epsilon1 (T5X's form).
        grad_sqr = grad * grad
        new_v_row = decay * v_row + mixing * (_mean_over(grad_sqr, f.col_dims) + epsilon1)
        new_v_col = decay * v_col + mixing * (_mean_over(grad_sqr, f.row_dims) + epsilon1)
        # Row dims' positions inside v_row (whose column dims are gone).
        rows_in_v_row = tuple(d - sum(c < d for c in f.col_dims) for d in f.row_dims)
        row_mean = jnp.mean(new_v_row, axis=rows_in_v_row, keepdims=True)
        row_factor = jnp.expand_dims(jax.lax.rsqrt(new_v_row / row_mean), f.col_dims)
        col_factor = jnp.expand_dims(jax.lax.rsqrt(new_v_col), f.row_dims)
        y = grad * row_factor * col_factor
        # mean(y^2) from the g^2 the statistics already read, so that y itself is never
        # written out (see `_factored_mean_square`).
        y_mean_square = lambda: _factored_mean_square(grad_sqr, row_factor, col_factor, avg)
        new_v = v
      else:
        new_v = decay * v + mixing * (grad * grad + epsilon1)
        y = grad * jax.lax.rsqrt(new_v)
        y_mean_square = lambda: jnp.mean(y * y, axis=avg, keepdims=True)
        new_v_row, new_v_col = v_row, v_col
      if clipping_threshold is not None:
        rms = jnp.sqrt(y_mean_square())
        y = y / jnp.maximum(1.0, rms / clipping_threshold)
      if multiply_by_parameter_scale:
        if param_mean_square is None:
          p = param.astype(jnp.float32)
          param_mean_square = jnp.mean(p * p, axis=avg, keepdims=True)
        y = y * jnp.maximum(jnp.sqrt(param_mean_square), epsilon2)
      return y, new_v_row, new_v_col, new_v

    treedef = jax.tree.structure(updates)
    no_ids = jax.tree.map(lambda _: None, updates)
    leaves = [treedef.flatten_up_to(t) for t in (updates, params if params is not None else updates,
                                                  state.v_row, state.v_col, state.v, factorings,
                                                  no_ids if row_ids is None else row_ids)]
    results = [update_one(*args) for args in zip(*leaves)]
    unflatten = lambda i: jax.tree.unflatten(treedef, [r[i] for r in results])
    return unflatten(0), FactoredRmsState(state.count + 1, unflatten(1), unflatten(2), unflatten(3))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def factored_state_logical_axes(state: FactoredRmsState, factorings, param_axes):
  """Logical axes of the second-moment tree: each factor keeps its parameter's other axes."""
  def axes_for(f: Factoring, axes: PartitionSpec, dropped):
    if not f.factored:
      return PartitionSpec(None)
    return PartitionSpec(*[a for i, a in enumerate(axes) if i not in dropped])

  v_row = jax.tree.map(lambda f, a: axes_for(f, a, f.col_dims), factorings, param_axes,
                       is_leaf=lambda x: isinstance(x, Factoring))
  v_col = jax.tree.map(lambda f, a: axes_for(f, a, f.row_dims), factorings, param_axes,
                       is_leaf=lambda x: isinstance(x, Factoring))
  v = jax.tree.map(lambda f, a: a if not f.factored else PartitionSpec(None), factorings,
                   param_axes, is_leaf=lambda x: isinstance(x, Factoring))
  return FactoredRmsState(PartitionSpec(), v_row, v_col, v)


@gin.configurable(module="xltransfer.train")
@dataclasses.dataclass(frozen=True)
class Adafactor:
  """T5X's Adafactor hyper-parameters; `create` builds the optax transformation for a model.

  Defaults are those of T5X's mT5/T5.1.1 configs: factored, decay_rate 0.8, update clipping
  1.0, parameter scaling, no momentum. The second-moment decay counts steps as T5X does: the
  update from a state at step t (T5X's `state.step`, our counter; restored from a T5X
  checkpoint it is the checkpoint's step) uses 1 - (t - step_offset + 1) ** -decay_rate, so
  `step_offset` = the checkpoint's step restarts the estimates for fine-tuning (T5X's meaning).
  """
  decay_rate: float = 0.8
  step_offset: int = 0
  clipping_threshold: Optional[float] = 1.0
  multiply_by_parameter_scale: bool = True
  momentum: Optional[float] = None
  dtype_momentum: str = "float32"
  factored: bool = True
  min_dim_size_to_factor: int = 128
  epsilon1: float = 1e-30
  epsilon2: float = 1e-3
  global_norm_clip_threshold: Optional[float] = None
  logical_factor_rules: Optional[Dict[str, str]] = None

  def factor_rule(self, legacy: bool = False):
    """`(shape, logical_axes, path) -> Factoring` with these hyper-parameters; `legacy` gives
    the layout of checkpoints written before xltransfer followed T5X's."""
    rules = dict(STANDARD_LOGICAL_FACTOR_RULES, **(self.logical_factor_rules or {}))
    rule = factoring_before_t5x_layout if legacy else factoring_for
    return lambda shape, axes, path="": rule(tuple(shape), tuple(axes), rules,
                                             self.min_dim_size_to_factor, self.factored, path)

  def factorings(self, abstract_params, param_axes, legacy: bool = False):
    rule = self.factor_rule(legacy)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    axes = treedef.flatten_up_to(param_axes)
    out = [rule(p.shape, a, jax.tree_util.keystr(path)) for (path, p), a in zip(flat, axes)]
    return jax.tree.unflatten(treedef, out)

  def create(self, learning_rate, abstract_params, param_axes) -> "Optimizer":
    factorings = self.factorings(abstract_params, param_axes)
    parts = []
    if self.global_norm_clip_threshold:
      parts.append(optax.clip_by_global_norm(self.global_norm_clip_threshold))
    parts.append(scale_by_factored_rms(
        factorings, self.decay_rate, self.step_offset, self.epsilon1, self.epsilon2,
        self.clipping_threshold, self.multiply_by_parameter_scale))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    if self.momentum is not None:
      # T5X's beta1: m = beta1 * m + (1 - beta1) * (lr-scaled update), no bias correction.
      parts.append(optax.ema(self.momentum, debias=False,
                             accumulator_dtype=jnp.dtype(self.dtype_momentum)))
    return Optimizer(optax.chain(*parts), factorings, learning_rate, self.factor_rule(),
                     self.factorings(abstract_params, param_axes, legacy=True),
                     self.momentum is not None)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation plus what the trainer needs to shard and report its state."""
  transform: optax.GradientTransformation
  factorings: Any
  learning_rate: Any
  # `(shape, logical_axes, path) -> Factoring`: how T5X would factor a parameter of that shape
  # with these hyper-parameters (for reading a T5X checkpoint's per-layer state).
  factor_rule: Optional[Callable] = None
  # The factorings of checkpoints written before xltransfer followed T5X's layout.
  legacy_factorings: Any = None
  has_momentum: bool = False

  def init(self, params):
    return self.transform.init(params)

  def update(self, grads, state, params, row_ids=None):
    """`row_ids`: where a gradient holds only some rows of its parameter (see
    `accepts_row_sparse`), a tree of the params' structure with those ids there and None
    elsewhere; that update then holds the same rows (`row_sparse.apply_updates`)."""
    if row_ids is None:
      return self.transform.update(grads, state, params)
    return self.transform.update(grads, state, params, row_ids=row_ids)

  def accepts_row_sparse(self, path) -> bool:
    """Whether the parameter at `path` (keys into the params tree) can take a row-sparse
    gradient: factored and 2-D, and no momentum (which moves rows of zero gradient too)."""
    if self.has_momentum or self.factorings is None:
      return False
    f = self.factorings
    for key in path:
      if not isinstance(f, dict) or key not in f:
        return False
      f = f[key]
    return isinstance(f, Factoring) and f.factored and f.ndim == 2 and not f.batch_dims

  def state_logical_axes(self, abstract_state, param_axes):
    """Logical axes for every optimizer-state leaf: sharded like its parameter.

    Sub-states with the parameters' tree structure (momentum) take the parameters' axes, the
    factored second moments their reduced axes, anything else (counters) is replicated.
    """
    params_struct = jax.tree.structure(param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))

    def visit(node):
      if isinstance(node, FactoredRmsState):
        return factored_state_logical_axes(node, self.factorings, param_axes)
      if _same_structure(node, params_struct):
        return param_axes
      if isinstance(node, tuple) and not hasattr(node, "shape"):
        children = [visit(child) for child in node]
        return type(node)(*children) if hasattr(node, "_fields") else tuple(children)
      if isinstance(node, (dict, list)):
        raise TypeError(f"unexpected optimizer state container {type(node)}")
      return jax.tree.map(lambda _: PartitionSpec(), node)

    return visit(abstract_state)

  def legacy_layout_changes(self):
    """Parameters whose second moment an old (pre-T5X-layout) checkpoint stores differently:
    [(name, old Factoring, current Factoring)]."""
    if self.legacy_factorings is None:
      return []
    is_factoring = lambda x: isinstance(x, Factoring)
    flat, _ = jax.tree_util.tree_flatten_with_path(self.factorings, is_leaf=is_factoring)
    old = jax.tree.leaves(self.legacy_factorings, is_leaf=is_factoring)
    name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)
    return [(name(path), o, f) for (path, f), o in zip(flat, old)
            if (o.row_dims, o.col_dims) != (f.row_dims, f.col_dims)]

  def state_with(self, abstract_state, step: int, v_row, v_col, v, momentum=None):
    """An optimizer state like `abstract_state` (from `jax.eval_shape(init)`) holding the given
    second moments and momentum (trees like the params; momentum None: the abstract leaves
    stay, meaning zeros), every counter at `step`. Leaves are kept as given (host arrays or
    lazy sources): placing them on devices is the caller's."""
    def visit(node):
      if isinstance(node, FactoredRmsState):
        return FactoredRmsState(np.asarray(step, node.count.dtype), v_row, v_col, v)
      if isinstance(node, optax.EmaState):
        ema = momentum if momentum is not None else node.ema
        return optax.EmaState(count=np.asarray(step, node.count.dtype), ema=ema)
      if isinstance(node, optax.ScaleByScheduleState):
        return optax.ScaleByScheduleState(count=np.asarray(step, node.count.dtype))
      if isinstance(node, optax.EmptyState):
        return node
      if isinstance(node, tuple) and not hasattr(node, "_fields"):
        return tuple(visit(child) for child in node)
      raise TypeError(f"no rule to restore optimizer state {type(node).__name__}")

    return visit(abstract_state)


def _same_structure(node, params_struct) -> bool:
  try:
    return jax.tree.structure(node) == params_struct
  except Exception:  # pylint: disable=broad-except
    return False
