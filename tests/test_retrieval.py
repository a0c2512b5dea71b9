"""Retrieval: pooled encoder embeddings, cosine nearest neighbours, chunked top-k search."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.errors import ConfigError
from xltransfer.evaluation import inference, retrieval
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel


def _brute_force_top_k(queries, candidates, k):
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
  scores = q @ c.T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def test_toy_set_with_known_answers():
  rng = np.random.RandomState(0)
  candidates = rng.randn(12, 8).astype(np.float32)
  answer = rng.permutation(12)[:5]
  # Queries point the way of their answer (with noise) but have other lengths: cosine
  # similarity must ignore the length.
  queries = candidates[answer] * np.array([[0.1], [3.0], [7.0], [0.5], [1.0]], np.float32)
  queries += 0.01 * rng.randn(*queries.shape).astype(np.float32)
  np.testing.assert_array_equal(retrieval.nearest_neighbours(queries, candidates * 5), answer)


def test_hand_made_cosine_ranking():
  candidates = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
  queries = np.array([[2, 0.1], [0.1, -3]], np.float32)
  scores, indices = retrieval.cosine_top_k(queries, candidates, k=3)
  np.testing.assert_array_equal(indices, [[0, 2, 1], [0, 3, 2]])
  np.testing.assert_allclose(scores[0, 0], 2 / np.hypot(2, 0.1), rtol=1e-6)


@pytest.mark.parametrize("chunk,query_batch", [(5, 4), (7, 100), (1000, 3), (1, 2)])
def test_chunked_search_equals_unchunked(chunk, query_batch):
  rng = np.random.RandomState(1)
  queries = rng.randn(11, 6).astype(np.float32)
  candidates = rng.randn(37, 6).astype(np.float32)
  k = 7
  whole_scores, whole_indices = retrieval.cosine_top_k(queries, candidates, k,
                                                       candidate_chunk=10**6, query_batch=10**6)
  scores, indices = retrieval.cosine_top_k(queries, candidates, k, candidate_chunk=chunk,
                                           query_batch=query_batch)
  np.testing.assert_array_equal(indices, whole_indices)
  np.testing.assert_allclose(scores, whole_scores, rtol=1e-6, atol=1e-6)
  expected_scores, expected_indices = _brute_force_top_k(queries, candidates, k)
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_k_is_capped_at_the_number_of_candidates():
  rng = np.random.RandomState(2)
  scores, indices = retrieval.cosine_top_k(rng.randn(2, 4), rng.randn(3, 4), k=20,
                                           candidate_chunk=2)
  assert indices.shape == (2, 3) and scores.shape == (2, 3)
  assert sorted(indices[0]) == [0, 1, 2]
  with pytest.raises(ValueError, match="empty"):
    retrieval.cosine_top_k(rng.randn(2, 4), np.zeros((0, 4)), k=1)


def test_tatoeba_both_directions():
  rng = np.random.RandomState(3)
  en = rng.randn(6, 5).astype(np.float32)
  xx = en + 0.05 * rng.randn(6, 5).astype(np.float32)
  # Sentence 4 of xx is a copy of English sentence 1: xx->en gets row 4 wrong, and en->xx
  # row 1 is closest to xx row 4, not xx row 1 (which has noise).
  xx[4] = en[1]
  forward, backward = retrieval.tatoeba_directions(xx, en, candidate_chunk=4)
  np.testing.assert_array_equal(forward, [0, 1, 2, 3, 1, 5])
  assert backward[1] == 4 and list(backward[[0, 2, 3, 5]]) == [0, 2, 3, 5]


@pytest.fixture(scope="module")
def tiny():
  model = EncoderDecoderModel(get_config("tiny", vocab_size=64))
  return model, model.init(jax.random.PRNGKey(0))


def _tokens():
  tokens = np.random.RandomState(4).randint(2, 64, size=(5, 9)).astype(np.int32)
  tokens[2, 4:] = 0
  return tokens


@pytest.mark.slow
def test_final_layer_embeddings_are_the_models_mean_pooled_encoding(tiny):
  model, params = tiny
  tokens = _tokens()
  runner = inference.Inference(model, params, batch_size=2, show_progress=False)
  got = retrieval.embed(runner, tokens)
  expected = np.asarray(model.encode(params, jnp.asarray(tokens)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Padding does not count: row 2 equals the encoding of its 4 real tokens alone.
  alone = np.asarray(model.encode(params, jnp.asarray(tokens[2:3, :4])))
  np.testing.assert_allclose(got[2], alone[0], rtol=1e-4, atol=1e-4)


def test_intermediate_layer_is_the_last_layer_before_the_final_norm(tiny):
  model, params = tiny
  tokens = jnp.asarray(_tokens())
  last = model.config.num_encoder_layers - 1
  hidden = retrieval.encoder_layer_output(model, params, tokens, last)
  assert hidden.shape == tokens.shape + (model.config.emb_dim,)
  # The final output is RMSNorm(last layer's output) * scale.
  scale = params["encoder"]["encoder_norm"]["scale"]
  h = hidden.astype(jnp.float32)
  normed = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * scale
  final = model.module.apply({"params": params}, tokens,
                             method=type(model.module).encode)
  np.testing.assert_allclose(np.asarray(normed), np.asarray(final), rtol=1e-4, atol=1e-4)
  pooled = retrieval.pooled_embeddings(model, params, tokens, layer=0)
  np.testing.assert_allclose(
      np.asarray(pooled),
      np.asarray(retrieval.mean_pool(retrieval.encoder_layer_output(model, params, tokens, 0),
                                     tokens)), rtol=1e-6)
  assert not np.allclose(np.asarray(pooled), np.asarray(model.encode(params, tokens)))
  # Negative layers count from the end.
  np.testing.assert_allclose(
      np.asarray(retrieval.pooled_embeddings(model, params, tokens, layer=-1)),
      np.asarray(retrieval.pooled_embeddings(model, params, tokens, layer=last)), rtol=1e-6)


def test_bad_layer_is_a_config_error(tiny):
  model, params = tiny
  with pytest.raises(ConfigError, match="layer 7 does not exist"):
    retrieval.pooled_embeddings(model, params, jnp.asarray(_tokens()), layer=7)
