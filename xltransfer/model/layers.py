"""Building blocks of the T5 v1.1 / mT5 network, with T5X parameter names and logical axes.

Every parameter is created through `nn.with_logical_partitioning`, so the partitioner can derive
its sharding from names like ('embed', 'mlp') without knowing the module structure.
Parameters are float32; computation runs in `dtype` (bfloat16 by default), with softmax and
normalisation statistics in float32 for stability. In bfloat16 every matrix product takes
bfloat16 operands and accumulates in float32 (`mixed_einsum`), the form the matrix units of
CPUs (avx512_bf16, AMX), TPUs and GPUs run at full rate.
"""
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Initializer = Callable[..., jax.Array]

# T5X's defaults: fan-in scaled truncated normal for dense kernels, N(0, 1) for the embedding.
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
default_embed_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

# A large negative bias rather than -inf keeps fully masked rows (padding queries) finite.
MASK_BIAS = -1e10


def constrain(x, axes):
  """Logical sharding constraint on an activation (a no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; statistics in float32."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(variance + self.epsilon)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return (normed * scale).astype(self.dtype)


class Dense(nn.Module):
  """A bias-free dense layer with a 2-D kernel named `kernel`, as T5X stores it.

  `out_dtype` (default: `dtype`) is the dtype of the result; the output layer asks for
  float32 logits from bfloat16 operands.
  """
  features: int
  kernel_axes: tuple
  kernel_init: Initializer = default_kernel_init
  dtype: jnp.dtype = jnp.float32
  out_dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), jnp.float32)
    out_dtype = self.out_dtype or self.dtype
    # The float32 kernel goes in as it is: a bf16 product casts it inside `mixed_einsum`, which
    # returns its gradient in float32 without a round trip through bf16.
    return dense_2d(x.astype(self.dtype), kernel, out_dtype=out_dtype).astype(out_dtype)


def dense_2d(x, kernel, kernel_contracting_axis: int = 0, out_dtype=jnp.float32):
  """`x` times a 2-D kernel over x's last axis, with x's leading axes flattened into one.

  With [batch, length, embed] activations the kernel gradient contracts over two axes, and
  XLA:CPU answers that by copying the output gradient into a transposed layout and running a
  slow generic GEMM (for the 250k-vocab logits layer, seconds per step). One flattened row
  axis keeps every dot of the forward and backward pass a plain matrix product. The reshape
  only merges leading axes, so the sharding of the batch axis carries through unchanged.
  Low-precision operands accumulate in float32 and return `out_dtype` (`mixed_einsum`).
  """
  rows = x.reshape(-1, x.shape[-1])
  if _is_low_precision(rows, kernel):
    spec = "re,ef->rf" if kernel_contracting_axis == 0 else "re,fe->rf"
    out = mixed_einsum(spec, rows, kernel, out_dtype)
  else:
    out = jax.lax.dot_general(rows, kernel, (((1,), (kernel_contracting_axis,)), ((), ())))
  return out.reshape(x.shape[:-1] + out.shape[-1:])


def _is_low_precision(*operands):
  return any(jnp.dtype(x.dtype).itemsize < 4 for x in operands)


def einsum(spec: str, a, b, out_dtype=jnp.float32):
  """`jnp.einsum` in float32; with low-precision operands, `mixed_einsum`."""
  if _is_low_precision(a, b):
    return mixed_einsum(spec, a, b, out_dtype)
  return jnp.einsum(spec, a, b).astype(out_dtype)


# --- Mixed precision products: low-precision operands, float32 accumulation and result. ---
#
# XLA:CPU hands a dot to its fast GEMM library (YNNPACK: bf16 x bf16 -> f32 on avx512_bf16 /
# AMX) only when the dot is "canonical": operands and result row-major, the left operand's
# contracted axes last (the right one's may be first or last), batch axes leading. Any other
# bf16 dot is upcast to float32 and runs on the generic GEMM at less than half the rate. The
# backward pass of a plain dot breaks this twice: its cotangent is float32 (so the backward
# dots are mixed f32 x bf16) and a weight gradient contracts over the rows, the leading axis
# of both operands. `mixed_einsum` has its own VJP that casts the cotangent to the operands'
# dtype (exact where the result is cast to bf16 right after; for the float32 logits it rounds
# their gradient to bf16, as T5X's and torch autocast's bf16 output layers do) and writes every
# product, forward and backward, in canonical form, transposing an operand into a fresh
# row-major copy when it must (see `_row_major`). A float32 kernel is cast to bf16 inside it.
# On a CPU its gradient then leaves the float32 accumulation as it is; cast outside (as T5X and
# torch autocast do), the gradient came back rounded to bf16 and was converted to float32
# again, two passes over the 512 x 250k output kernel's gradient in mT5-small. On TPU/GPU it
# is still rounded to bf16, which keeps data-parallel gradient all-reduces in bf16.


# The checkpoint name of a `mixed_einsum` product without batch axes (a dense layer's or the
# output layer's, not attention's): what the "minimal" remat policy saves in low precision.
NO_BATCH_PRODUCT = "no_batch_product"


def _row_major(x, perm, always: bool = False):
  """`x` transposed by `perm` into a row-major array of its own.

  XLA gives a transpose a permuted layout (a free bitcast), which a dot reading it sees as
  non-canonical. Passing the flattened data through an optimization barrier forces a real
  copy with the default layout: one memory pass over an operand that a GEMM then reads many
  times. With `always`, the identity permutation goes through it too: that is free for an
  array already row-major, and copies one that arrives as a transpose from upstream (such as
  heads-major keys and values).
  """
  if not always and list(perm) == list(range(x.ndim)):
    return x
  moved = jnp.transpose(x, perm)
  if target_platform() != "cpu":
    return moved  # The layout problem is XLA:CPU's; elsewhere let XLA choose (and shard) freely.
  return jax.lax.optimization_barrier(moved.reshape(-1)).reshape(moved.shape)


def target_platform() -> str:
  """The platform being compiled for: the active mesh's (which may be an ahead-of-time TPU
  topology on a CPU host), else the default backend's."""
  try:
    # Semi-private (jax 0.10-0.11): where `with mesh:` keeps the active physical mesh.
    from jax.interpreters import pxla  # pylint: disable=import-outside-toplevel
    mesh = pxla.thread_resources.env.physical_mesh
  except (ImportError, AttributeError):  # a jax without it: the default backend decides
    return jax.default_backend()
  if not mesh.empty:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def _parse_einsum(spec: str):
  try:
    inputs, out = spec.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
  except ValueError:
    raise ValueError(f"mixed_einsum takes 'ab,bc->ac' with two operands, got {spec!r}") from None
  for name, labels in (("left operand", lhs), ("right operand", rhs), ("result", out)):
    if not labels.isalpha() or len(set(labels)) != len(labels):
      raise ValueError(f"mixed_einsum {spec!r}: the {name} needs distinct letters, got {labels!r}")
  stray = (set(out) - set(lhs) - set(rhs)) | ((set(lhs) ^ set(rhs)) - set(out))
  if stray:
    raise ValueError(f"mixed_einsum {spec!r}: axes {sorted(stray)} are summed within one operand "
                     "or appear from nowhere; only products of two operands are supported")
  return lhs, rhs, out


def _canonical_plan(lhs: str, rhs: str, out: str):
  """How to run `lhs,rhs->out` as a canonical dot: the operand permutations, the right
  operand's axis order after its permutation, the dot's result labels, and the numbers of
  batch and contracted axes."""
  batch = [c for c in out if c in lhs and c in rhs]
  contract = [c for c in lhs if c in rhs and c not in out]
  lhs_free = [c for c in lhs if c not in rhs]
  rhs_free = [c for c in rhs if c not in lhs]
  lhs_order = batch + lhs_free + contract
  rhs_orders = (batch + contract + rhs_free, batch + rhs_free + contract)
  rhs_order = next((o for o in rhs_orders if "".join(o) == rhs), rhs_orders[0])
  result = batch + lhs_free + rhs_free
  return ([lhs.index(c) for c in lhs_order], [rhs.index(c) for c in rhs_order],
          "".join(rhs_order), "".join(result), len(batch), len(contract))


def _copied(lhs, rhs, out, sizes):
  """Elements transposed by the plan for `lhs,rhs->out` (to choose the cheaper operand order)."""
  lhs_perm, rhs_perm, _, result, _, _ = _canonical_plan(lhs, rhs, out)
  count = lambda labels: int(np.prod([sizes[c] for c in labels]))
  return ((lhs_perm != sorted(lhs_perm)) * count(lhs) + (rhs_perm != sorted(rhs_perm)) * count(rhs)
          + (result != out) * count(out))


def _canonical_einsum(lhs: str, rhs: str, out: str, a, b, out_dtype):
  """`lhs,rhs->out` of a and b as one canonical dot_general accumulating in float32.

  A transpose of the result also goes through `_row_major`: XLA would otherwise fold it into
  the dot by swapping the operands, which makes the dot non-canonical again.
  """
  lhs_perm, rhs_perm, rhs_order, result, num_batch, num_contract = _canonical_plan(lhs, rhs, out)
  a = _row_major(a, lhs_perm, always=True)
  b = _row_major(b, rhs_perm, always=True)
  batch_axes = tuple(range(num_batch))
  lhs_contract = tuple(range(a.ndim - num_contract, a.ndim))
  contracted = [c for c in rhs_order if c not in result]
  rhs_contract = tuple(rhs_order.index(c) for c in contracted)
  product = jax.lax.dot_general(a, b, ((lhs_contract, rhs_contract), (batch_axes, batch_axes)),
                                preferred_element_type=jnp.float32).astype(out_dtype)
  result_perm = [result.index(c) for c in out]
  if result_perm != sorted(result_perm) and target_platform() == "cpu":
    # With nothing between the dot and the transpose (a float32 result), XLA folds the
    # transpose into the dot, swapping its operands into a non-canonical dot (which XLA:CPU
    # cannot even run for bf16 operands); the barrier keeps the dot as planned.
    product = jax.lax.optimization_barrier(product)
  return _row_major(product, result_perm)


def _ordered_einsum(x_labels, y_labels, out, x, y, sizes, out_dtype):
  """The product of x and y into `out`, with the operands in whichever order copies less."""
  if _copied(y_labels, x_labels, out, sizes) < _copied(x_labels, y_labels, out, sizes):
    return _canonical_einsum(y_labels, x_labels, out, y, x, out_dtype)
  return _canonical_einsum(x_labels, y_labels, out, x, y, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _mixed_einsum(spec, compute_dtype, out_dtype, operand_dtypes, a, b):
  del operand_dtypes
  return _canonical_einsum(*_parse_einsum(spec), a.astype(compute_dtype),
                           b.astype(compute_dtype), out_dtype)


def _mixed_einsum_fwd(spec, compute_dtype, out_dtype, operand_dtypes, a, b):
  del operand_dtypes
  a_low, b_low = a.astype(compute_dtype), b.astype(compute_dtype)
  return _canonical_einsum(*_parse_einsum(spec), a_low, b_low, out_dtype), (a_low, b_low)


def _mixed_einsum_bwd(spec, compute_dtype, out_dtype, operand_dtypes, residuals, g):
  del out_dtype
  a, b = residuals
  lhs, rhs, out = _parse_einsum(spec)
  sizes = dict(zip(lhs, a.shape)) | dict(zip(rhs, b.shape))
  # Low-precision cotangents: every backward product is again bf16 x bf16 -> f32.
  g = g.astype(compute_dtype)
  if target_platform() == "cpu":
    # Each gradient leaves the float32 accumulation in its operand's own dtype: a float32
    # kernel's gradient is not rounded to bf16 and converted back (two passes over it).
    rounded = operand_dtypes
  else:
    # Rounded to bf16 first, as with the kernel cast outside (T5X's form): XLA:TPU then
    # all-reduces a data-parallel kernel gradient in bf16 (in float32 without the rounding,
    # twice the bytes on the interconnect; checked on a compile-only v5e:2x2 by
    # tests/test_bf16_numerics.py).
    rounded = (compute_dtype, compute_dtype)
  ga = _ordered_einsum(out, rhs, lhs, g, b, sizes, rounded[0]).astype(operand_dtypes[0])
  gb = _ordered_einsum(lhs, out, rhs, a, g, sizes, rounded[1]).astype(operand_dtypes[1])
  return ga, gb


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def mixed_einsum(spec: str, a, b, out_dtype=jnp.float32):
  """`jnp.einsum(spec, a, b)` accumulated in float32 and returned in `out_dtype`, every product
  (also in the backward pass) a canonical low-precision x low-precision -> float32 dot.
  Single-letter axes. The operands may differ in dtype (bf16 activations, a float32 kernel):
  the wider one is cast to the narrower inside, and its gradient comes back in its own dtype,
  on a CPU straight from the float32 accumulation, elsewhere rounded to the narrow dtype first
  (T5X's form; see the note above `NO_BATCH_PRODUCT`)."""
  lhs, rhs, out = _parse_einsum(spec)  # Errors at the call site rather than inside the VJP.
  compute_dtype = min((jnp.dtype(a.dtype), jnp.dtype(b.dtype)), key=lambda d: d.itemsize)
  for operand in (a, b):
    if not jnp.issubdtype(operand.dtype, jnp.floating):
      raise ValueError(f"mixed_einsum {spec!r}: floating operands only, got {operand.dtype}")
  product = _mixed_einsum(spec, compute_dtype, jnp.dtype(out_dtype),
                          (jnp.dtype(a.dtype), jnp.dtype(b.dtype)), a, b)
  if not set(lhs) & set(rhs) & set(out):
    # A remat policy sees the custom VJP as one opaque call, not the dot_general inside it:
    # the name lets the "minimal" policy save this product as it saves a plain
    # `checkpoint_dots_with_no_batch_dims` dot.
    product = checkpoint_name(product, NO_BATCH_PRODUCT)
  return product


# Entries that a trainer may add beside an `Embed`'s table in its params scope: the sorted
# distinct token ids of a batch and those ids' rows of the table, as a differentiable array of
# their own. The lookup then reads the rows, so the gradient with respect to them is the
# table's gradient without the zeros of every row that the batch does not use
# (`xltransfer/train/row_sparse.py`).
LOOKED_UP_IDS = "looked_up_ids"
LOOKED_UP_ROWS = "looked_up_rows"


def take_looked_up_rows(ids, rows, tokens):
  """`table[tokens]` from `rows = table[ids]` (`ids` sorted, distinct). A token that is not
  among `ids` gives NaN, never another token's row: a loss that uses a token that the trainer
  did not collect turns non-finite (the trainer stops on that) instead of training on the
  wrong row."""
  positions = jnp.clip(jnp.searchsorted(ids, tokens), 0, ids.shape[0] - 1)
  found = (jnp.take(ids, positions) == tokens)[..., None]
  return jnp.where(found, jnp.take(rows, positions, axis=0), jnp.nan)


class Embed(nn.Module):
  """Token embedding table `embedding [vocab, embed]`; `attend` gives tied logits."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(default_embed_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens):
    if self.has_variable("params", LOOKED_UP_ROWS):
      rows = take_looked_up_rows(self.get_variable("params", LOOKED_UP_IDS),
                                 self.get_variable("params", LOOKED_UP_ROWS), tokens)
      return rows.astype(self.dtype)
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    if self.has_variable("params", LOOKED_UP_ROWS):
      # Every row of the table gets a gradient from tied logits: the looked-up rows alone
      # would silently drop all the others'.
      raise ValueError("Embed.attend (tied logits) needs the whole table's gradient; it "
                       "cannot be used with the looked-up rows of a row-sparse gradient")
    # float32 logits, whatever the operands' dtype.
    return dense_2d(x.astype(self.dtype), self.embedding,
                    kernel_contracting_axis=1).astype(jnp.float32)


def relative_position_buckets(query_length: int, key_length: int, bidirectional: bool,
                              num_buckets: int, max_distance: int, query_offset: int = 0):
  """T5's bucketing of key-minus-query distances, computed in numpy at trace time.

  Half of the buckets (all of them when causal) hold exact small distances; the rest cover
  distances up to `max_distance` on a log scale, and anything further shares the last bucket.
  """
  query = np.arange(query_offset, query_offset + query_length, dtype=np.int64)[:, None]
  key = np.arange(key_length, dtype=np.int64)[None, :]
  relative = key - query
  buckets = np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative)
  else:
    distance = -np.minimum(relative, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # float32 to match the reference implementations bucket for bucket at the boundaries.
  with np.errstate(divide="ignore"):
    log_ratio = (np.log(distance.astype(np.float32) / np.float32(max_exact))
                 / np.float32(np.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
  large = max_exact + np.where(is_small, 0, log_ratio).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, distance, large)


class RelativePositionBiases(nn.Module):
  """One learned scalar per (head, bucket), shared by all layers of a stack.

  The bias is float32 whatever `dtype` says (the field stays for configuration compatibility).
  """
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_length: int, key_length: int):
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    buckets = relative_position_buckets(query_length, key_length, self.bidirectional,
                                        self.num_buckets, self.max_distance)
    # A gather with constant indices along the bucket axis: heads stay sharded, and its
    # gradient is a scatter-add into the small table. (A one-hot product instead made the
    # gradient a [heads, q*k] x [q*k, buckets] matmul, 0.1 s of an mT5-small CPU step.)
    # float32 in every mode: the bias joins float32 attention scores.
    values = jnp.take(table, jnp.asarray(buckets, jnp.int32), axis=1)
    return values[None]  # [1, heads, q, k]


# Dropout as T5 applies it (Mesh TensorFlow T5, and T5X's t5x/examples/t5: `nn.Dropout(...,
# broadcast_dims=(-2,))`, and attention dropout with `dropout_shape[-2] = 1`): one mask per
# sequence, shared by all its positions. Activations [..., length, features] drop the same
# features at every position; attention weights [b, h, q, k] drop the same keys for every query.
# Besides matching the recipe mT5's hyperparameters were tuned with, it draws 1/length of the
# random bits: on a CPU, per-element masks made an mT5-small step with dropout 1.5x slower.
SHARED_ALONG_LENGTH = (-2,)


def dropout(x, rate: float, deterministic: bool):
  """`x` [..., length, features] with dropout at `rate`, one mask shared along the length."""
  if deterministic or rate == 0:
    return x
  return nn.Dropout(rate, broadcast_dims=SHARED_ALONG_LENGTH)(x, deterministic=False)


# --- Attention with low-precision operands: softmax(q k^T + bias) v with its own VJP. ---
#
# Autodiff of the softmax keeps its float32 numerators and normalisers ([batch, heads, q, k],
# 50 MB per mT5-small encoder layer each) for the backward pass, which reads them back beside
# the weights' gradient: a memory-bound pass that took a third of the attention's time on the
# CPU. The softmax is computed in float32 as before, but only the bf16 weights that the
# value product uses are kept (and the dropout keep-mask), and the backward pass computes the
# scores' gradient w * (dw - sum(dw * w)) from them in one elementwise pass, in float32.


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(query, key, value, bias, keep, keep_rate):
  return _attention_fwd(query, key, value, bias, keep, keep_rate)[0]


def _dropped(weights, keep, keep_rate):
  """Dropout of the attention weights as flax's nn.Dropout applies it (scaled in their dtype)."""
  if keep is None:
    return weights
  return jnp.where(keep, weights / jnp.asarray(keep_rate, weights.dtype), jnp.zeros_like(weights))


def _attention_fwd(query, key, value, bias, keep, keep_rate):
  scores = mixed_einsum("bqhd,bhkd->bhqk", query, key)
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  weights = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
  out = mixed_einsum("bhqk,bhkd->bqhd", _dropped(weights, keep, keep_rate), value, query.dtype)
  # The bias itself is not kept (under scan it would be stacked per layer): a zero-size array
  # of its shape stands for it.
  bias_shape = None if bias is None else jnp.zeros(bias.shape + (0,), jnp.float32)
  return out, (query, key, value, weights, keep, bias_shape)


def _attention_bwd(keep_rate, residuals, g):
  query, key, value, weights, keep, bias_shape = residuals
  g = g.astype(query.dtype)
  d_dropped = mixed_einsum("bqhd,bhkd->bhqk", g, value)  # float32
  d_value = _sum_over_queries(g, _dropped(weights, keep, keep_rate), value.dtype)
  # The forward scaled by the keep rate as rounded to the weights' dtype; so does this.
  scale = jnp.asarray(keep_rate, weights.dtype).astype(jnp.float32)
  d_weights = d_dropped if keep is None else jnp.where(keep, d_dropped / scale, 0.0)
  w = weights.astype(jnp.float32)
  d_scores = w * (d_weights - jnp.sum(d_weights * w, axis=-1, keepdims=True))
  low = d_scores.astype(query.dtype)
  d_query = mixed_einsum("bhqk,bhkd->bqhd", low, key, query.dtype)
  d_key = _sum_over_queries(query, low, key.dtype)
  d_bias = None
  if bias_shape is not None:
    shape = bias_shape.shape[:-1]
    summed = tuple(i for i, (b, d) in enumerate(zip(shape, d_scores.shape)) if b != d)
    d_bias = jnp.sum(d_scores, axis=summed, keepdims=True).reshape(shape)
  return d_query, d_key, d_value, d_bias, None


def _sum_over_queries(per_query, weights, dtype):
  """sum_q weights[b, h, q, k] per_query[b, q, h, d] as [b, h, k, d]: the key and value
  gradients.

  Computed as [b, h, d, k] and transposed: as a canonical dot with [k, d] rows the [q, k]
  weights would be copied transposed (25 MB per mT5-small encoder layer in bf16); this way
  only the [q, d] operand and the result are (3 MB each). The encoder's attention forward and
  backward took 40.2 ms against 34.2 ms (XLA:CPU, same process; the same bits).
  """
  return jnp.swapaxes(mixed_einsum("bqhd,bhqk->bhdk", per_query, weights, dtype), 2, 3)


_attention.defvjp(_attention_fwd, _attention_bwd)


def low_precision_attention(query, key, value, bias, keep=None, keep_rate: float = 1.0):
  """softmax(query key^T + bias) value for bf16 [b, q, h, d] queries and heads-major
  [b, h, k, d] keys and values; float32 bias [.., h or 1, q, k] (its gradient is float32) and
  softmax; `keep`, a boolean [b, h, q, k] mask or one [b, h, 1, k] shared by the queries, drops
  weights as nn.Dropout(1 - keep_rate)."""
  if bias is not None:
    bias = bias.astype(jnp.float32)
  return _attention(query, key, value, bias, keep, float(keep_rate))


class MultiHeadAttention(nn.Module):
  """Multi-head attention without 1/sqrt(d) scaling (it is folded into the query init).

  With `decode=True` keys and values are cached: self-attention appends one position per
  call; cross-attention (`static_kv=True`) projects the encoder output once, on the call that
  creates the cache, and reuses it for every decoding step.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  static_kv: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, bias, deterministic: bool, decode: bool = False,
               decode_length: int = 0):
    joined = self.num_heads * self.head_dim
    depth_scaling = np.sqrt(self.head_dim).astype(np.float32)
    query_init = lambda *a: default_kernel_init(*a) / depth_scaling
    project = functools.partial(Dense, features=joined, kernel_axes=("embed", "joined_kv"),
                                dtype=self.dtype)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    # Keys and values are kept heads-major, [batch, heads, length, kv]: both attention products
    # are then batched matmuls without a transpose, and the decoding caches are stored in that
    # layout, so a decoding step does not re-transpose the whole cross-attention cache.
    heads_major = lambda x: jnp.swapaxes(split(x), 1, 2)

    query = split(project(kernel_init=query_init, name="query")(inputs_q))
    query = constrain(query, ("batch", "length", "heads", "kv"))

    if decode and self.static_kv:
      key, value = self._cached_static_kv(inputs_kv, project, heads_major)
    else:
      key = heads_major(project(name="key")(inputs_kv))
      value = heads_major(project(name="value")(inputs_kv))
      if decode:
        key, value, bias = self._append_to_cache(key, value, bias, decode_length)
    key = constrain(key, ("batch", "heads", "length", "kv"))
    value = constrain(value, ("batch", "heads", "length", "kv"))

    if _is_low_precision(query, key, value):
      keep = None
      if not deterministic and self.dropout_rate > 0:
        # [b, h, 1, k]: one mask for every query (see `dropout`).
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate,
                                    key.shape[:2] + (1, key.shape[2]))
      out = low_precision_attention(query, key, value, bias, keep, 1.0 - self.dropout_rate)
    else:
      scores = einsum("bqhd,bhkd->bhqk", query, key)
      if bias is not None:
        scores = scores + bias.astype(jnp.float32)
      weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
      weights = dropout(weights, self.dropout_rate, deterministic)  # [b, h, q, k]: shared by q
      out = einsum("bhqk,bhkd->bqhd", weights, value, out_dtype=self.dtype)
    out = out.reshape(out.shape[:-2] + (joined,))
    return Dense(features=inputs_q.shape[-1], kernel_axes=("joined_kv", "embed"), dtype=self.dtype,
                 name="out")(out)

  def _cached_static_kv(self, inputs_kv, project, heads_major):
    """Cross-attention keys/values: computed from the encoder output once, then read back."""
    key_var = self.variable("cache", "cached_key",
                            lambda: heads_major(project(name="key")(inputs_kv)))
    value_var = self.variable("cache", "cached_value",
                              lambda: heads_major(project(name="value")(inputs_kv)))
    return key_var.value, value_var.value

  def _append_to_cache(self, key, value, bias, decode_length):
    """Writes this step's key/value at the cache index; masks positions not yet decoded.

    The call that creates the cache (zeros of the full decode length) is also step 0, so
    decoding needs no separate priming pass over the whole target length.
    """
    batch, heads, step_length, depth = key.shape
    if step_length != 1:
      raise ValueError(f"a decoding step takes one position per call, got {step_length}")
    cache_shape = (batch, heads, decode_length, depth)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
    index = cache_index.value
    zero = jnp.array(0, dtype=index.dtype)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (zero, zero, index, zero))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value,
                                                      (zero, zero, index, zero))
    cache_index.value = index + 1
    visible = (jnp.arange(decode_length) <= index)[None, None, None, :]
    step_bias = jnp.where(visible, 0.0, MASK_BIAS).astype(jnp.float32)
    if bias is not None:
      # `bias` covers all [decode_length, decode_length] positions; keep this query's row.
      row = jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=2)
      step_bias = step_bias + row.astype(jnp.float32)
    return cached_key.value, cached_value.value, step_bias


# tanh-approximate gelu (mT5's "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
_GELU_SCALE = float(np.sqrt(2.0 / np.pi))
_GELU_CUBIC = 0.044715


def _gelu_tanh(x):
  """The tanh of the approximation and gelu itself, of a float32 `x`."""
  tanh = jnp.tanh(_GELU_SCALE * (x + _GELU_CUBIC * x * x * x))
  return tanh, 0.5 * x * (1.0 + tanh)


@jax.custom_vjp
def gated_gelu(gate, linear):
  """gelu(gate) * linear, computed in float32 and returned in `gate`'s dtype.

  The same function as `nn.gelu(gate, approximate=True) * linear`, with one rounding to a
  bf16 result instead of one per operation, and a hand-written gradient that recomputes the
  tanh from the two inputs in one pass: autodiff of the bf16 expression took 9.8 ms for
  mT5-small's [8, 512, 1024] encoder activations (forward and backward, XLA:CPU) against
  5.1 ms, and its gate gradient was 5x further from a float64 reference.
  """
  _, gelu = _gelu_tanh(gate.astype(jnp.float32))
  return (gelu * linear.astype(jnp.float32)).astype(gate.dtype)


def _gated_gelu_fwd(gate, linear):
  return gated_gelu(gate, linear), (gate, linear)


def _gated_gelu_bwd(residuals, g):
  gate, linear = residuals
  x = gate.astype(jnp.float32)
  g = g.astype(jnp.float32)
  tanh, gelu = _gelu_tanh(x)
  # d gelu / dx = 0.5 (1 + tanh) + 0.5 x (1 - tanh^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
  slope = 0.5 * (1.0 + tanh) + (0.5 * _GELU_SCALE) * x * (1.0 - tanh * tanh) * (
      1.0 + 3.0 * _GELU_CUBIC * x * x)
  return ((g * linear.astype(jnp.float32) * slope).astype(gate.dtype),
          (g * gelu).astype(linear.dtype))


gated_gelu.defvjp(_gated_gelu_fwd, _gated_gelu_bwd)


class GatedGeluMlp(nn.Module):
  """T5 v1.1 feed-forward: gelu(x W0) * (x W1), then Wo (tanh-approximate gelu, as mT5)."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dense = functools.partial(Dense, features=self.mlp_dim, kernel_axes=("embed", "mlp"),
                              dtype=self.dtype)
    hidden = gated_gelu(dense(name="wi_0")(x), dense(name="wi_1")(x))
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    hidden = dropout(hidden, self.dropout_rate, deterministic)
    return Dense(features=x.shape[-1], kernel_axes=("mlp", "embed"), dtype=self.dtype,
                 name="wo")(hidden)


POSITION_BIAS_BATCH_SUM = "position_bias_batch_sum"


@jax.custom_vjp
def add_position_bias(mask_bias, position_bias):
  """[b, 1, q, k] mask bias + [1, h, q, k] position bias -> the [b, h, q, k] attention bias.

  The sum autodiff would write, with the position bias's gradient (the batch's sum of the
  bias gradient) taken as a product with a vector of ones: XLA:CPU reduces a leading axis into
  a large result slowly (36 ms for mT5-small's [8, 6, 512, 512] encoder bias, against about
  1 ms as a product), once per stack and step.
  """
  _check_bias_shapes(mask_bias, position_bias)
  return mask_bias + position_bias


def _check_bias_shapes(mask_bias, position_bias):
  if mask_bias.ndim != 4 or position_bias.ndim != 4 or mask_bias.shape[1] != 1 or (
      position_bias.shape[0] != 1):
    raise ValueError(f"add_position_bias: a [b, 1, q, k] mask bias and a [1, h, q, k] position "
                     f"bias, got {mask_bias.shape} and {position_bias.shape}")


def _add_position_bias_fwd(mask_bias, position_bias):
  _check_bias_shapes(mask_bias, position_bias)
  return mask_bias + position_bias, None


def _add_position_bias_bwd(_, g):
  with jax.named_scope(POSITION_BIAS_BATCH_SUM):  # a float32 product by design
    batch_ones = jnp.ones(g.shape[:1], g.dtype)
    d_position = jax.lax.dot_general(batch_ones, g, (((0,), (0,)), ((), ())),
                                     precision=jax.lax.Precision.HIGHEST)[None]
  return jnp.sum(g, axis=1, keepdims=True), d_position


add_position_bias.defvjp(_add_position_bias_fwd, _add_position_bias_bwd)


def attention_mask_bias(query_mask, key_mask, causal: bool = False,
                        query_segments=None, key_segments=None):
  """An additive [b, 1, q, k] bias: 0 where attention is allowed, MASK_BIAS elsewhere."""
  allowed = query_mask[:, None, :, None] & key_mask[:, None, None, :]
  if causal:
    q_len, k_len = query_mask.shape[1], key_mask.shape[1]
    allowed = allowed & (jnp.arange(q_len)[:, None] >= jnp.arange(k_len)[None, :])[None, None]
  if query_segments is not None:
    allowed = allowed & (query_segments[:, None, :, None] == key_segments[:, None, None, :])
  return jnp.where(allowed, 0.0, MASK_BIAS).astype(jnp.float32)
