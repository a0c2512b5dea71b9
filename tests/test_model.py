"""The mT5 network and model API: sizes, layouts, loss definitions, packing, decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.errors import ConfigError
from xltransfer.checkpoints import layout
from xltransfer.model import losses
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("size,expected", [("small", 300e6), ("base", 580e6), ("large", 1.23e9),
                                           ("xl", 3.74e9), ("xxl", 12.9e9)])
def test_published_sizes_have_published_parameter_counts(size, expected):
  params = EncoderDecoderModel(get_config(size, scan_layers=size in ("xl", "xxl"))).abstract_params()
  assert abs(_count(params) - expected) / expected < 0.01


def test_unknown_size_names_the_valid_ones():
  with pytest.raises(ConfigError, match="valid sizes: tiny, small, base, large, xl, xxl"):
    get_config("medium")


def test_every_parameter_has_logical_axes_of_its_rank():
  model = EncoderDecoderModel(get_config("tiny"))
  shapes = layout.flatten(dict(model.abstract_params()))
  axes = layout.flatten(dict(model.param_logical_axes()))
  assert shapes.keys() == axes.keys()
  for name, shape in shapes.items():
    assert len(axes[name]) == len(shape.shape), name
    assert all(isinstance(a, str) for a in axes[name]), name
  assert tuple(axes["decoder/logits_dense/kernel"]) == ("embed", "vocab")
  assert tuple(axes["encoder/relpos_bias/rel_embedding"]) == ("heads", "relpos_buckets")


def _batch(seed=0, batch=3, inputs=12, targets=7, vocab=1024):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=(batch, inputs))
  enc[0, inputs - 4:] = 0
  tgt = rng.randint(2, vocab, size=(batch, targets))
  tgt[1, targets - 3:] = 0
  dec = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], axis=1) * (tgt > 0)
  return {"encoder_input_tokens": jnp.asarray(enc, jnp.int32),
          "decoder_input_tokens": jnp.asarray(dec, jnp.int32),
          "decoder_target_tokens": jnp.asarray(tgt, jnp.int32),
          "decoder_loss_weights": jnp.asarray(tgt > 0, jnp.float32)}


@pytest.fixture(scope="module")
def tiny():
  model = EncoderDecoderModel(get_config("tiny"))
  return model, model.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize("remat", ["none", "minimal", "full"])
@pytest.mark.slow
def test_scanned_layers_compute_the_same_function(tiny, remat):
  model, params = tiny
  scanned_model = EncoderDecoderModel(get_config("tiny", scan_layers=True, remat_policy=remat))
  scanned = layout.stack_layers(params, model.config)
  assert jax.tree_util.tree_structure(jax.tree_util.tree_map(np.asarray, scanned)) == \
      jax.tree_util.tree_structure(jax.tree_util.tree_map(np.asarray, dict(scanned_model.abstract_params())))
  batch = _batch()
  np.testing.assert_allclose(scanned_model.logits(scanned, batch), model.logits(params, batch),
                             atol=1e-5)
  g1 = jax.grad(lambda p: model.loss_fn(p, batch)[0])(params)
  g2 = jax.grad(lambda p: scanned_model.loss_fn(p, batch)[0])(scanned)
  g2 = layout.unstack_layers(jax.tree_util.tree_map(np.asarray, g2), model.config)
  for name, value in layout.flatten(jax.tree_util.tree_map(np.asarray, g1)).items():
    np.testing.assert_allclose(layout.flatten(g2)[name], value, atol=1e-5, err_msg=name)


def _compiled_gradient_cost(config):
  """The compiled loss gradient's (FLOPs, temporary bytes) on a 4 x 64/32 batch."""
  model = EncoderDecoderModel(config)
  batch = {name: jax.ShapeDtypeStruct((4, 64 if name.startswith("encoder") else 32), jnp.int32)
           for name in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
  compiled = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b)[0])).lower(
      model.abstract_params(), batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"], compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_minimal_remat_recomputes_no_dense_product_in_either_dtype(dtype):
  # "minimal" saves the dense and output layers' products and recomputes the rest of a layer.
  # In bf16 those products are `mixed_einsum` custom VJPs, which a policy on dot_general cannot
  # see: before they carried a checkpoint name, bf16 "minimal" compiled to exactly "full".
  costs = {policy: _compiled_gradient_cost(get_config(
      "tiny", dtype=dtype, scan_layers=True, remat_policy=policy, num_encoder_layers=4,
      num_decoder_layers=4)) for policy in ("none", "minimal", "full")}
  (flops_none, temp_none), (flops_min, temp_min), (flops_full, temp_full) = (
      costs["none"], costs["minimal"], costs["full"])
  assert flops_none < flops_full
  # Attention's products are all "minimal" recomputes: a small share of the layer's FLOPs here.
  assert flops_min - flops_none < 0.25 * (flops_full - flops_none), costs
  assert temp_full < temp_min < temp_none, costs


def test_loss_matches_a_numpy_reference_for_each_option(tiny):
  _, params = tiny
  batch = _batch()
  config = get_config("tiny")
  logits = np.asarray(EncoderDecoderModel(config).logits(params, batch), np.float64)
  targets = np.asarray(batch["decoder_target_tokens"])
  weights = np.asarray(batch["decoder_loss_weights"])
  log_z = np.log(np.exp(logits).sum(-1))
  logp = logits - log_z[..., None]
  vocab = logits.shape[-1]
  for smoothing in (0.0, 0.1):
    soft = np.full(logits.shape, smoothing / (vocab - 1))
    np.put_along_axis(soft, targets[..., None], 1 - smoothing, axis=-1)
    entropy = -np.sum(np.where(soft > 0, soft * np.log(np.maximum(soft, 1e-30)), 0), -1)
    token = -(soft * logp).sum(-1) - entropy + 1e-4 * log_z ** 2
    total = (token * weights).sum()
    for factor, expected in ((None, total), (512.0, total / 512.0),
                             ("NUM_REAL_TARGET_TOKENS", total / weights.sum())):
      model = EncoderDecoderModel(config, z_loss=1e-4, label_smoothing=smoothing,
                                  loss_normalizing_factor=factor)
      loss, metrics = model.loss_fn(params, batch)
      np.testing.assert_allclose(loss, expected, rtol=2e-5)
      assert metrics["num_tokens"] == weights.sum()
      assert metrics["num_examples"] == 3


def test_unknown_loss_normalizing_factor_is_rejected():
  with pytest.raises(ValueError, match="NUM_REAL_TOKENS"):
    EncoderDecoderModel(get_config("tiny"), loss_normalizing_factor="NUM_REAL_TOKENS")


@pytest.mark.slow
def test_packed_examples_do_not_see_each_other(tiny):
  """Two examples packed into one row give the same per-token scores as when apart."""
  model, params = tiny
  a, b = _batch(seed=1, batch=2, inputs=6, targets=4), _batch(seed=2, batch=2, inputs=5, targets=3)
  ea, eb = np.asarray(a["encoder_input_tokens"][1]), np.asarray(b["encoder_input_tokens"][0])
  ta, tb = np.asarray(a["decoder_target_tokens"][0]), np.asarray(b["decoder_target_tokens"][0])
  def shifted(t):
    return np.concatenate([[0], t[:-1]])
  packed = {
      "encoder_input_tokens": np.concatenate([ea, eb, [0]])[None],
      "encoder_segment_ids": np.array([[1] * 6 + [2] * 5 + [0]]),
      "decoder_target_tokens": np.concatenate([ta, tb, [0]])[None],
      "decoder_input_tokens": np.concatenate([shifted(ta), shifted(tb), [0]])[None],
      "decoder_segment_ids": np.array([[1] * 4 + [2] * 3 + [0]]),
  }
  packed = {k: jnp.asarray(v, jnp.int32) for k, v in packed.items()}
  packed_logits = np.asarray(model.logits(params, packed))[0]
  for enc, tgt, span in ((ea, ta, slice(0, 4)), (eb, tb, slice(4, 7))):
    alone = {"encoder_input_tokens": jnp.asarray(enc[None], jnp.int32),
             "decoder_target_tokens": jnp.asarray(tgt[None], jnp.int32),
             "decoder_input_tokens": jnp.asarray(shifted(tgt)[None], jnp.int32)}
    np.testing.assert_allclose(packed_logits[span], np.asarray(model.logits(params, alone))[0],
                               atol=1e-5)
  _, metrics = model.loss_fn(params, {**packed, "decoder_loss_weights": packed["decoder_target_tokens"] > 0})
  assert metrics["num_examples"] == 2


@pytest.mark.slow
def test_greedy_decoding_agrees_with_teacher_forced_argmax(tiny):
  model, params = tiny
  batch = _batch(seed=3)
  decoded = np.asarray(model.greedy_decode(params, batch["encoder_input_tokens"], 6))
  for row in range(decoded.shape[0]):
    prefix = [0]
    for step in range(6):
      probe = {"encoder_input_tokens": batch["encoder_input_tokens"][row:row + 1],
               "decoder_input_tokens": jnp.asarray([prefix], jnp.int32),
               "decoder_target_tokens": jnp.ones((1, len(prefix)), jnp.int32)}
      token = int(np.argmax(np.asarray(model.logits(params, probe))[0, -1]))
      assert decoded[row, step] == token, (row, step)
      if token == 1:
        assert (decoded[row, step + 1:] == 0).all()
        break
      prefix.append(token)


def test_rank_scores_and_pooled_encodings(tiny):
  model, params = tiny
  batch = _batch(seed=4)
  logits = np.asarray(model.logits(params, batch), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.asarray(batch["decoder_target_tokens"])
  expected = (np.take_along_axis(logp, targets[..., None], -1)[..., 0] * (targets > 0)).sum(-1)
  np.testing.assert_allclose(model.score_targets(params, batch), expected, rtol=1e-5)
  tokens = batch["encoder_input_tokens"]
  pooled = np.asarray(model.encode(params, tokens))
  assert pooled.shape == (3, 64)
  # Padding must not change the pooled vector of a row.
  padded = jnp.concatenate([tokens, jnp.zeros((3, 5), jnp.int32)], axis=1)
  np.testing.assert_allclose(np.asarray(model.encode(params, padded)), pooled, atol=1e-5)


def test_chunked_argmax_equals_jnp_argmax_with_ties_and_ragged_sizes():
  from xltransfer.model.argmax import argmax_last_axis
  rng = np.random.RandomState(0)
  for shape in [(3, 1000), (2, 5, 300), (4, 100)]:
    x = rng.randint(-5, 5, size=shape).astype(np.float32)  # many ties
    np.testing.assert_array_equal(np.asarray(argmax_last_axis(jnp.asarray(x), chunk=64)),
                                  np.argmax(x, axis=-1))
  x = np.full((2, 777), -3.0e38, np.float32)
  x[0, 776] = -1.0e38  # the maximum sits in the padded last chunk
  x[1, 0] = -1.0e38
  np.testing.assert_array_equal(np.asarray(argmax_last_axis(jnp.asarray(x), chunk=128)), [776, 0])
  rows = np.array([[-np.inf] * 300, [np.nan] + [0.0] * 299, [0.0] * 200 + [np.nan] + [0.0] * 99],
                  np.float32)
  np.testing.assert_array_equal(np.asarray(argmax_last_axis(jnp.asarray(rows), chunk=128)),
                                np.asarray(jnp.argmax(jnp.asarray(rows), axis=-1)))
