"""Dual encoder: in-batch-negatives contrastive loss on the mean-pooled mT5 encoder."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.errors import ConfigError
from xltransfer.model.config import get_config
from xltransfer.model.dual_encoder import DualEncoderModel, in_batch_negatives_loss

VOCAB = 64


@pytest.fixture(scope="module")
def model_and_params():
  model = DualEncoderModel(get_config("tiny", vocab_size=VOCAB), temperature=0.1)
  return model, model.init(jax.random.PRNGKey(0))


def _batch(rows=4, seed=0):
  rng = np.random.RandomState(seed)
  queries = rng.randint(2, VOCAB, size=(rows, 8)).astype(np.int32)
  candidates = rng.randint(2, VOCAB, size=(rows, 6)).astype(np.int32)
  queries[1, 5:] = 0
  candidates[2, 3:] = 0
  return {"query_tokens": queries, "candidate_tokens": candidates}


def _expected_loss(model, params, batch, temperature):
  def embed(tokens):
    pooled = np.asarray(model.encode(params, jnp.asarray(tokens)))
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
  logits = embed(batch["query_tokens"]) @ embed(batch["candidate_tokens"]).T
  logits = logits / temperature
  logits = logits - logits.max(axis=1, keepdims=True)
  logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -np.mean(np.diag(logprobs)), np.mean(np.argmax(logits, axis=1) == np.arange(len(logits)))


@pytest.mark.slow
def test_loss_is_softmax_over_in_batch_negatives(model_and_params):
  model, params = model_and_params
  batch = _batch()
  loss, metrics = model.loss_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
  expected, accuracy = _expected_loss(model, params, batch, 0.1)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  assert float(metrics["num_examples"]) == 4 and float(metrics["num_tokens"]) == 4
  np.testing.assert_allclose(float(metrics["accuracy"]), accuracy)
  for key in ("loss", "z_loss", "cross_ent_loss", "accuracy_correct"):
    assert key in metrics


@pytest.mark.slow
def test_all_zero_padding_rows_are_neither_examples_nor_negatives(model_and_params):
  model, params = model_and_params
  batch = _batch()
  padded = {k: np.concatenate([v, np.zeros((2,) + v.shape[1:], v.dtype)])
            for k, v in batch.items()}
  loss, metrics = model.loss_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
  padded_loss, padded_metrics = model.loss_fn(params, {k: jnp.asarray(v)
                                                       for k, v in padded.items()})
  np.testing.assert_allclose(float(padded_loss), float(loss), rtol=1e-5)
  assert float(padded_metrics["num_examples"]) == 4


def test_symmetric_loss_averages_both_directions():
  model = DualEncoderModel(get_config("tiny", vocab_size=VOCAB), temperature=0.1,
                           symmetric=True)
  params = model.init(jax.random.PRNGKey(0))
  batch = _batch()
  loss, _ = model.loss_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
  forward, _ = _expected_loss(model, params, batch, 0.1)
  swapped = dict(batch, query_tokens=batch["candidate_tokens"],
                 candidate_tokens=batch["query_tokens"])
  backward, _ = _expected_loss(model, params, swapped, 0.1)
  np.testing.assert_allclose(float(loss), (forward + backward) / 2, rtol=1e-4)


def test_gradient_steps_pull_pairs_together(model_and_params):
  model, params = model_and_params
  batch = {k: jnp.asarray(v) for k, v in _batch(rows=6, seed=1).items()}
  grad_fn = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))
  (first, _), _ = grad_fn(params, batch)
  for _ in range(5):
    (_, _), grads = grad_fn(params, batch)
    params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  (last, metrics), grads = grad_fn(params, batch)
  assert float(last) < float(first) - 0.1
  assert float(metrics["accuracy"]) == 1.0
  # The model holds, and trains, only the shared embedding and the encoder.
  assert set(grads) == {"token_embedder", "encoder"}
  assert np.any(np.asarray(grads["token_embedder"]["embedding"]))


@pytest.mark.slow
def test_dropout_rng_changes_the_loss():
  model = DualEncoderModel(get_config("tiny", vocab_size=VOCAB, dropout_rate=0.3))
  params = model.init(jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  plain, _ = model.loss_fn(params, batch)
  dropped, _ = model.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert float(plain) != float(dropped)


def test_packed_or_seq2seq_batches_are_refused_with_the_setting_to_change(model_and_params):
  model, params = model_and_params
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  packed = dict(batch, encoder_segment_ids=jnp.ones_like(batch["query_tokens"]))
  with pytest.raises(ConfigError, match="DatasetConfig.pack = False"):
    model.loss_fn(params, packed)
  seq2seq = {"encoder_input_tokens": batch["query_tokens"],
             "decoder_target_tokens": batch["candidate_tokens"]}
  with pytest.raises(ConfigError, match="feature_converter = 'dual_encoder'"):
    model.loss_fn(params, seq2seq)
  with pytest.raises(ConfigError, match="temperature must be positive"):
    DualEncoderModel(get_config("tiny", vocab_size=VOCAB), temperature=0.0)


def test_three_by_three_loss_by_hand():
  # Unit embeddings whose cosine matrix is [[1, .6, 0], [0, .8, 1], [.6, 1, .8]]; with
  # temperature 0.1 the logits are ten times that, and row i's label is column i.
  queries = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  candidates = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  real = jnp.array([True, True, True])
  loss, correct, pairs = in_batch_negatives_loss(queries, candidates, real, 0.1)
  rows = [-10 + math.log(math.exp(10) + math.exp(6) + math.exp(0)),
          -8 + math.log(math.exp(0) + math.exp(8) + math.exp(10)),
          -8 + math.log(math.exp(6) + math.exp(10) + math.exp(8))]
  assert float(loss) == pytest.approx(sum(rows) / 3, rel=1e-5)
  # Only row 0 ranks its own candidate first (row 1 prefers column 2, row 2 column 1).
  assert float(correct) == 1.0 and float(pairs) == 3.0
  # Symmetric: the columns' cross entropies too (column j's label is query j).
  columns = [-10 + math.log(math.exp(10) + math.exp(0) + math.exp(6)),
             -8 + math.log(math.exp(6) + math.exp(8) + math.exp(10)),
             -8 + math.log(math.exp(0) + math.exp(10) + math.exp(8))]
  symmetric, _, _ = in_batch_negatives_loss(queries, candidates, real, 0.1, symmetric=True)
  assert float(symmetric) == pytest.approx((sum(rows) + sum(columns)) / 6, rel=1e-5)
  # A padding row is neither a pair nor a negative: the other two rows lose column 2.
  padded, _, pairs = in_batch_negatives_loss(queries, candidates,
                                             jnp.array([True, True, False]), 0.1)
  two = [-10 + math.log(math.exp(10) + math.exp(6)), -8 + math.log(math.exp(0) + math.exp(8))]
  assert float(padded) == pytest.approx(sum(two) / 2, rel=1e-5) and float(pairs) == 2.0


def test_row_loss_weights_count_pairs_per_microbatch(model_and_params):
  # The trainer weighs microbatch i by the sum of its rows' weights: pairs, not tokens.
  model, _ = model_and_params
  batch = _batch(rows=6)
  batch = {k: np.concatenate([v[:5], np.zeros_like(v[:1])]) for k, v in batch.items()}
  micro = {k: jnp.asarray(v).reshape((2, 3) + v.shape[1:]) for k, v in batch.items()}
  per_micro = jnp.sum(jax.vmap(model.row_loss_weights)(micro), axis=-1)
  np.testing.assert_array_equal(np.asarray(per_micro), [3.0, 2.0])
