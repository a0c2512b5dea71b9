"""The bf16 attention core with its own VJP (`layers.low_precision_attention`): values and
gradients against autodiff of the textbook computation, dropout as flax applies it, the
model's use of it, and the memory it saves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.model import layers

B, Q, K, H, D = 2, 16, 24, 3, 8
KEEP_RATE = 0.9


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((B, Q, H, D)), jnp.bfloat16)
  k = jnp.asarray(rng.standard_normal((B, H, K, D)), jnp.bfloat16)
  v = jnp.asarray(rng.standard_normal((B, H, K, D)), jnp.bfloat16)
  keep = jnp.asarray(rng.random((B, H, Q, K)) > 1 - KEEP_RATE)
  cotangent = jnp.asarray(rng.standard_normal((B, Q, H, D)), jnp.float32)
  return q, k, v, keep, cotangent, rng


def _textbook(q, k, v, bias, keep):
  """softmax(q k^T + bias) v, products in float32 from the bf16 operands, the weights rounded
  to bf16 and dropped as nn.Dropout drops them."""
  scores = jnp.einsum("bqhd,bhkd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  if bias is not None:
    scores = scores + bias
  weights = jax.nn.softmax(scores, -1).astype(jnp.bfloat16)
  if keep is not None:
    weights = jnp.where(keep, weights / jnp.asarray(KEEP_RATE, jnp.bfloat16), 0)
  return jnp.einsum("bhqk,bhkd->bqhd", weights.astype(jnp.float32), v.astype(jnp.float32))


def _relative_error(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("bias_shape", [(1, H, Q, K), (B, 1, Q, K), (B, H, Q, K), None])
@pytest.mark.parametrize("dropout", [False, True])
def test_values_and_gradients_match_autodiff_of_the_textbook_form(bias_shape, dropout):
  q, k, v, keep, cotangent, rng = _inputs()
  keep = keep if dropout else None
  bias = (None if bias_shape is None
          else jnp.asarray(rng.standard_normal(bias_shape), jnp.float32))
  rate = KEEP_RATE if dropout else 1.0

  def ours(q, k, v, *bias):
    out = layers.low_precision_attention(q, k, v, bias[0] if bias else None, keep, rate)
    return out.astype(jnp.float32)

  def textbook(q, k, v, *bias):
    return _textbook(q, k, v, bias[0] if bias else None, keep)

  args = (q, k, v) + (() if bias is None else (bias,))
  out, vjp = jax.vjp(ours, *args)
  expected_out, expected_vjp = jax.vjp(textbook, *args)
  assert out.shape == expected_out.shape
  # bf16 rounding: the output and the cotangents in bf16, as every product's operands are.
  assert _relative_error(out, expected_out) < 5e-3
  grads, expected = vjp(cotangent), expected_vjp(cotangent)
  for name, got, want in zip("qkv" + "b", grads, expected):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    assert _relative_error(got, want) < 1.5e-2, name
  if bias is not None:
    assert grads[3].dtype == jnp.float32  # The bias gradient is not rounded to bf16.


def test_a_key_position_dropped_for_every_query_gets_no_value_gradient():
  q, k, v, keep, cotangent, _ = _inputs(1)
  all_kept = jnp.ones_like(keep)

  def value_grad(mask):
    f = lambda v: layers.low_precision_attention(q, k, v, None, mask, KEEP_RATE)
    return jax.vjp(f, v)[1](cotangent.astype(jnp.bfloat16))[0].astype(jnp.float32)

  # Dropping every weight of one key position for every query cuts that value row off.
  cut = all_kept.at[:, :, :, 5].set(False)
  grad = value_grad(cut)
  assert np.all(np.asarray(grad[:, :, 5]) == 0)
  assert np.all(np.abs(np.asarray(grad[:, :, 6])) > 0)


def test_the_model_attention_uses_it_in_bf16_and_drops_only_when_training(monkeypatch):
  attention = layers.MultiHeadAttention(num_heads=H, head_dim=D, dropout_rate=0.5,
                                        dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((B, Q, 24)), jnp.float32)
  params = attention.init(jax.random.PRNGKey(0), x, x, None, True)
  deterministic = attention.apply(params, x, x, None, True)
  train = [attention.apply(params, x, x, None, False, rngs={"dropout": jax.random.PRNGKey(s)})
           for s in (1, 2)]
  assert deterministic.dtype == jnp.bfloat16
  assert not np.allclose(np.asarray(train[0], np.float32), np.asarray(train[1], np.float32))
  assert not np.allclose(np.asarray(train[0], np.float32),
                         np.asarray(deterministic, np.float32))
  calls = []
  original = layers.low_precision_attention
  monkeypatch.setattr(layers, "low_precision_attention",
                      lambda *a, **k: calls.append(a) or original(*a, **k))
  attention.apply(params, x, x, None, True)
  attention.apply(params, x, x, None, False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert len(calls) == 2
  assert calls[0][4] is None  # no keep-mask when deterministic
  assert calls[1][4].shape == (B, H, 1, Q) and calls[1][5] == 0.5  # one mask for all queries


def test_the_attention_gradient_keeps_less_than_autodiff():
  # Autodiff of the softmax keeps float32 [b, h, q, k] tensors for the backward pass; the
  # hand-written VJP keeps the bf16 weights. 8 x 6 heads x 512 x 512, as an mT5-small encoder
  # layer on the benchmark batch.
  b, h, length, d = 8, 6, 512, 64
  shapes = [((b, length, h, d), jnp.bfloat16), ((b, h, length, d), jnp.bfloat16),
            ((b, h, length, d), jnp.bfloat16), ((1, h, length, length), jnp.float32)]
  args = [jax.ShapeDtypeStruct(s, t) for s, t in shapes]

  def temp_bytes(attention):
    def total(q, k, v, bias):
      # Two layers' worth, so the residuals of the first are alive during the second.
      out = attention(q, k, v, bias)
      out = attention(out, k, v, bias)
      return jnp.sum(out.astype(jnp.float32))
    grad = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

  def autodiff_form(q, k, v, bias):
    scores = layers.mixed_einsum("bqhd,bhkd->bhqk", q, k) + bias
    weights = jax.nn.softmax(scores, axis=-1).astype(jnp.bfloat16)
    return layers.mixed_einsum("bhqk,bhkd->bqhd", weights, v, jnp.bfloat16)

  score_sized = 4 * b * h * length * length  # one float32 [b, h, q, k]
  ours = temp_bytes(lambda q, k, v, bias: layers.low_precision_attention(q, k, v, bias))
  autodiff = temp_bytes(autodiff_form)
  assert ours + 0.5 * score_sized <= autodiff, (ours / score_sized, autodiff / score_sized)


def test_float32_attention_is_unchanged_by_it(monkeypatch):
  # The float32 path (the HF-parity configuration) stays autodiff of jax.nn.softmax.
  calls = []
  original = layers.low_precision_attention
  monkeypatch.setattr(layers, "low_precision_attention",
                      lambda *a, **k: calls.append(a) or original(*a, **k))
  attention = layers.MultiHeadAttention(num_heads=H, head_dim=D, dtype=jnp.float32)
  x = jnp.ones((B, Q, 24), jnp.float32)
  params = attention.init(jax.random.PRNGKey(0), x, x, None, True)
  attention.apply(params, x, x, None, True)
  assert not calls


def test_position_bias_added_to_the_mask_has_autodiffs_values_and_gradients():
  rng = np.random.default_rng(3)
  mask = jnp.asarray(rng.normal(size=(3, 1, 5, 7)), jnp.float32)
  position = jnp.asarray(rng.normal(size=(1, 4, 5, 7)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 4, 5, 7)), jnp.float32)

  def total(add):
    return lambda m, p: jnp.sum(jnp.tanh(add(m, p)) * weights)

  plain = lambda m, p: m + p
  np.testing.assert_array_equal(layers.add_position_bias(mask, position), plain(mask, position))
  ours = jax.jit(jax.grad(total(layers.add_position_bias), argnums=(0, 1)))(mask, position)
  want = jax.grad(total(plain), argnums=(0, 1))(mask, position)
  for got, expected in zip(ours, want):
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_position_bias_needs_a_per_example_mask_and_a_shared_position_bias():
  with pytest.raises(ValueError, match=r"\[b, 1, q, k\] mask bias"):
    layers.add_position_bias(jnp.zeros((2, 3, 4, 4)), jnp.zeros((1, 3, 4, 4)))
  with pytest.raises(ValueError, match=r"got \(2, 1, 4, 4\) and \(2, 3, 4, 4\)"):
    jax.grad(lambda p: jnp.sum(layers.add_position_bias(jnp.zeros((2, 1, 4, 4)), p)))(
        jnp.zeros((2, 3, 4, 4)))
