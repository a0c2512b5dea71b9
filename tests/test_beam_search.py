"""Beam search: agrees with greedy at beam 1 and with exhaustive search when wide enough."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel


def _model(vocab, seed, scan=False):
  model = EncoderDecoderModel(get_config("tiny", vocab_size=vocab, scan_layers=scan))
  params = model.init(jax.random.PRNGKey(seed))
  # Sharpen the output layer so sequences differ clearly in probability.
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"] * 4
  return model, params


def _inputs(vocab, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(2, vocab, size=(3, 9))
  tokens[1, 5:] = 0
  return jnp.asarray(tokens, jnp.int32)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.slow
def test_beam_of_one_is_greedy(scan):
  model, params = _model(1024, seed=0, scan=scan)
  tokens = _inputs(1024)
  greedy = np.asarray(model.greedy_decode(params, tokens, 10))
  beams, _ = model.beam_search(params, tokens, 10, beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(np.asarray(beams)[:, 0], greedy)


def _sequence_logprob(model, params, tokens, sequence):
  target = jnp.asarray([sequence], jnp.int32)
  decoder_inputs = jnp.asarray([[0] + list(sequence[:-1])], jnp.int32)
  logits = model.logits(params, {"encoder_input_tokens": tokens,
                                 "decoder_input_tokens": decoder_inputs,
                                 "decoder_target_tokens": jnp.ones_like(target)})
  logp = jax.nn.log_softmax(logits[0])
  return float(sum(logp[i, t] for i, t in enumerate(sequence)))


@pytest.mark.slow
def test_wide_beam_finds_the_exhaustive_best_sequence():
  vocab, length = 6, 3
  model, params = _model(vocab, seed=1)
  tokens = _inputs(vocab, seed=2)[:1]
  # Every sequence of at most 3 tokens where EOS (1) can only come last.
  candidates = []
  for n in range(1, length + 1):
    for seq in itertools.product(range(vocab), repeat=n):
      if 1 in seq[:-1] or (n < length and seq[-1] != 1):
        continue
      candidates.append(seq)
  scored = sorted(((_sequence_logprob(model, params, tokens, s), s) for s in candidates),
                  reverse=True)
  beams, scores = model.beam_search(params, tokens, length, beam_size=vocab ** 2, alpha=0.0)
  best = [t for t in np.asarray(beams)[0, 0].tolist()]
  best = tuple(best[:best.index(1) + 1]) if 1 in best else tuple(best)
  assert best == scored[0][1]
  np.testing.assert_allclose(float(scores[0, 0]), scored[0][0], rtol=1e-5)


def test_length_penalty_changes_the_ranking_scale():
  model, params = _model(1024, seed=3)
  tokens = _inputs(1024)
  _, plain = model.beam_search(params, tokens, 6, beam_size=4, alpha=0.0)
  _, penalised = model.beam_search(params, tokens, 6, beam_size=4, alpha=1.0)
  plain, penalised = np.asarray(plain), np.asarray(penalised)
  assert (np.diff(plain, axis=1) <= 1e-6).all() and (np.diff(penalised, axis=1) <= 1e-6).all()
  # Normalising by ((5 + n) / 6) with n >= 1 shrinks every (negative) score's magnitude.
  assert (np.abs(penalised[:, 0]) < np.abs(plain[:, 0])).all()
