"""Building blocks of the T5 v1.1 / mT5 network, with T5X parameter names and logical axes.

Every parameter is created through `nn.with_logical_partitioning`, so the partitioner can derive
its sharding from names like ('embed', 'mlp') without knowing the module structure.
Parameters are float32; computation runs in `dtype` (bfloat16 by default), with softmax and
normalisation statistics in float32 for stability.
"""
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
  """A bias-free dense layer with a 2-D kernel named `kernel`, as T5X stores it."""
  features: int
  kernel_axes: tuple
  kernel_init: Initializer = default_kernel_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), jnp.float32)
    return dense_2d(x.astype(self.dtype), kernel.astype(self.dtype))


def dense_2d(x, kernel, kernel_contracting_axis: int = 0):
  """`x` times a 2-D kernel over x's last axis, with x's leading axes flattened into one.

  With [batch, length, embed] activations the kernel gradient contracts over two axes, and
  XLA:CPU answers that by copying the output gradient into a transposed layout and running a
  slow generic GEMM (for the 250k-vocab logits layer, seconds per step). One flattened row
  axis keeps every dot of the forward and backward pass a plain matrix product. The reshape
  only merges leading axes, so the sharding of the batch axis carries through unchanged.
  """
  rows = x.reshape(-1, x.shape[-1])
  out = jax.lax.dot_general(rows, kernel, (((1,), (kernel_contracting_axis,)), ((), ())))
  return out.reshape(x.shape[:-1] + out.shape[-1:])


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
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    return dense_2d(x.astype(self.dtype), self.embedding.astype(self.dtype),
                    kernel_contracting_axis=1)


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
  """One learned scalar per (head, bucket), shared by all layers of a stack."""
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
    # Gather as a one-hot product: it lowers to a matmul that shards cleanly over heads.
    onehot = jax.nn.one_hot(buckets, self.num_buckets, dtype=self.dtype)
    values = jnp.einsum("hb,qkb->hqk", table.astype(self.dtype), onehot)
    return values[None]  # [1, heads, q, k]


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

    scores = jnp.einsum("bqhd,bhkd->bhqk", query, key).astype(jnp.float32)
    if bias is not None:
      scores = scores + bias.astype(jnp.float32)
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, value)
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


class GatedGeluMlp(nn.Module):
  """T5 v1.1 feed-forward: gelu(x W0) * (x W1), then Wo (tanh-approximate gelu, as mT5)."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dense = functools.partial(Dense, features=self.mlp_dim, kernel_axes=("embed", "mlp"),
                              dtype=self.dtype)
    hidden = nn.gelu(dense(name="wi_0")(x), approximate=True) * dense(name="wi_1")(x)
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    if not deterministic and self.dropout_rate > 0:
      hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=False)
    return Dense(features=x.shape[-1], kernel_axes=("mlp", "embed"), dtype=self.dtype,
                 name="wo")(hidden)


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
