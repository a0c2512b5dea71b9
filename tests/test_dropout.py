"""Dropout as T5 applies it: one mask per sequence, shared by all of its positions.

The reference is T5X's own model (google-research/t5x, t5x/examples/t5/network.py and layers.py,
following Mesh TensorFlow T5): every activation dropout is `nn.Dropout(rate,
broadcast_dims=(-2,))` over [batch, length, features], and attention dropout draws its mask with
`dropout_shape[-2] = 1`, one mask over the keys for all queries. A per-element mask is a
different regulariser from the one mT5's fine-tuning recipes were tuned with (and draws `length`
times the random bits: it made an mT5-small CPU step with dropout 1.5x slower).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.model import layers
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel

B, L, F, H, D = 3, 9, 32, 2, 8
RATE = 0.5


class _Dropped(nn.Module):
  @nn.compact
  def __call__(self, x, deterministic):
    return layers.dropout(x, RATE, deterministic)


def _repeated_rows(seed=0, dtype=jnp.float32):
  """[B, L, F] inputs whose L positions are one vector per batch row, so that anything
  position-wise applied to them gives equal rows unless its dropout mask differs by position."""
  row = np.random.default_rng(seed).standard_normal((B, 1, F))
  return jnp.asarray(np.repeat(row, L, axis=1), dtype)


def _rows_equal(out):
  out = np.asarray(out, np.float32)
  return np.array_equal(out, np.broadcast_to(out[:, :1], out.shape))


def test_activation_dropout_shares_one_feature_mask_along_the_length():
  x = jnp.ones((B, L, F), jnp.float32)
  out = np.asarray(_Dropped().apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)}))
  assert set(np.unique(out)) == {0.0, 1.0 / RATE}  # dropped, or kept and rescaled
  assert _rows_equal(out)  # the same features dropped at every position
  assert not np.array_equal(out[0], out[1])  # but a different mask per sequence
  assert np.array_equal(np.asarray(_Dropped().apply({}, x, True)), np.asarray(x))


def test_the_mlp_drops_the_same_hidden_units_at_every_position():
  mlp = layers.GatedGeluMlp(mlp_dim=48, dropout_rate=RATE)
  x = _repeated_rows(1)
  params = mlp.init(jax.random.PRNGKey(0), x, True)
  trained = mlp.apply(params, x, False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert _rows_equal(trained)
  assert not np.allclose(np.asarray(trained), np.asarray(mlp.apply(params, x, True)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_attention_drops_the_same_keys_for_every_query(dtype):
  # Equal queries get equal attention weights over the (different) keys: each query's output
  # sums the kept keys' values, the same for every query exactly when the mask is.
  attention = layers.MultiHeadAttention(num_heads=H, head_dim=D, dropout_rate=RATE, dtype=dtype)
  x = _repeated_rows(2)
  params = attention.init(jax.random.PRNGKey(0), x, x, None, True)
  keys = x + jnp.arange(L, dtype=jnp.float32)[None, :, None] / L
  deterministic = attention.apply(params, x, keys, None, True)
  trained = attention.apply(params, x, keys, None, False, rngs={"dropout": jax.random.PRNGKey(3)})
  assert _rows_equal(deterministic)
  assert _rows_equal(trained)
  assert not np.allclose(np.asarray(trained, np.float32), np.asarray(deterministic, np.float32))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_every_dropout_of_the_model_shares_its_mask_along_the_length(monkeypatch, dtype):
  """The whole network in training mode: each flax Dropout broadcasts over the length axis (in
  float32 that includes the attention weights', over the queries), and in bfloat16 each
  attention's keep-mask has one query row."""
  config = get_config("tiny", dropout_rate=0.1).replace(dtype=dtype)
  model = EncoderDecoderModel(config)
  batch = {"encoder_input_tokens": np.full((2, 12), 5, np.int32),
           "decoder_input_tokens": np.full((2, 6), 5, np.int32),
           "decoder_target_tokens": np.full((2, 6), 7, np.int32),
           "decoder_loss_weights": np.ones((2, 6), np.float32)}
  params = model.init(jax.random.PRNGKey(0))
  dropouts, keep_masks = [], []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
      dropouts.append(context.module.broadcast_dims)
    return next_fun(*args, **kwargs)

  original = layers.low_precision_attention
  monkeypatch.setattr(layers, "low_precision_attention",
                      lambda *a, **k: keep_masks.append(a[4].shape) or original(*a, **k))
  with nn.intercept_methods(record):
    model.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert dropouts and set(dropouts) == {layers.SHARED_ALONG_LENGTH}
  if dtype == "bfloat16":  # encoder self-attention, decoder self- and cross-attention
    assert keep_masks and all(shape[2] == 1 for shape in keep_masks), keep_masks
  else:
    assert not keep_masks
