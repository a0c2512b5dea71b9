"""Batched fixed-shape inference: padding the last batch changes nothing; rank classification
picks the most likely choice; a sharded mesh gives the single-device answers."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.errors import ConfigError
from xltransfer.evaluation import inference
from xltransfer.model.config import get_config
from xltransfer.model.models import EOS_ID, EncoderDecoderModel

VOCAB = 64


@pytest.fixture(scope="module")
def model_and_params():
  model = EncoderDecoderModel(get_config("tiny", vocab_size=VOCAB))
  params = model.init(jax.random.PRNGKey(0))
  # A sharper output layer makes choices differ clearly in likelihood.
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"] * 4
  return model, params


def _inputs(rows=5, length=10, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(2, VOCAB, size=(rows, length)).astype(np.int32)
  tokens[1, 6:] = 0
  if rows > 3:
    tokens[3, 3:] = 0
  return tokens


def test_helpers_pad_and_shift():
  np.testing.assert_array_equal(inference.pad_columns([[5, 6, 7], [8]], 2), [[5, 6], [8, 0]])
  np.testing.assert_array_equal(inference.shift_right(np.array([[4, 5, 1]])), [[0, 4, 5]])


@pytest.mark.slow
def test_greedy_with_partial_last_batch_equals_unpadded(model_and_params):
  model, params = model_and_params
  tokens = _inputs()
  expected = np.asarray(model.greedy_decode(params, jnp.asarray(tokens), 6))
  runner = inference.Inference(model, params, batch_size=2, show_progress=False)
  got = runner.decode(tokens, max_decode_length=6)
  assert got.shape == (5, 6)
  np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_beam_with_partial_last_batch_equals_unpadded(model_and_params):
  model, params = model_and_params
  tokens = _inputs(seed=1)
  sequences, _ = model.beam_search(params, jnp.asarray(tokens), 5, 3, 0.6)
  runner = inference.Inference(model, params, batch_size=4, show_progress=False)
  got = runner.decode(tokens, max_decode_length=5, beam_size=3, alpha=0.6)
  np.testing.assert_array_equal(got, np.asarray(sequences)[:, 0])


@pytest.mark.slow
def test_score_matches_model_per_example(model_and_params):
  model, params = model_and_params
  tokens = _inputs(rows=3)
  targets = np.array([[7, 9, EOS_ID, 0], [11, EOS_ID, 0, 0], [3, 4, 5, EOS_ID]], np.int32)
  runner = inference.Inference(model, params, batch_size=2, show_progress=False)
  got = runner.score(tokens, targets)
  for i in range(3):
    batch = {"encoder_input_tokens": jnp.asarray(tokens[i:i + 1]),
             "decoder_target_tokens": jnp.asarray(targets[i:i + 1]),
             "decoder_input_tokens": jnp.asarray(inference.shift_right(targets[i:i + 1]))}
    np.testing.assert_allclose(got[i], np.asarray(model.score_targets(params, batch))[0],
                               rtol=1e-5, atol=1e-5)


def test_rank_classification_picks_the_known_best_choice(model_and_params):
  model, params = model_and_params
  tokens = _inputs(rows=3, seed=2)
  rng = np.random.RandomState(3)
  # The greedy output is planted among random sequences for every example, at a different
  # position each time; with random weights made sharp it is far more likely than them.
  greedy = np.asarray(model.greedy_decode(params, jnp.asarray(tokens), 4))
  choices, planted = [], [1, 0, 3]
  for i, count in enumerate([2, 3, 4]):
    rows = rng.randint(2, VOCAB, size=(count, 4)).astype(np.int32)
    rows[:, -1] = EOS_ID
    rows[planted[i]] = greedy[i]
    choices.append(rows)
  runner = inference.Inference(model, params, batch_size=4, show_progress=False)
  best, scores = runner.rank_classify(tokens, choices)
  np.testing.assert_array_equal(best, planted)
  assert [len(s) for s in scores] == [2, 3, 4]
  # Each choice's score is its own log-likelihood, whatever it was batched with.
  alone = runner.score(tokens[2:3].repeat(4, axis=0), choices[2])
  np.testing.assert_allclose(scores[2], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_rank_classification_single_token_choices_follow_first_step_logits(model_and_params):
  model, params = model_and_params
  tokens = _inputs(rows=2, seed=4)
  logits = model.logits(params, {"encoder_input_tokens": jnp.asarray(tokens),
                                 "decoder_input_tokens": jnp.zeros((2, 1), jnp.int32),
                                 "decoder_target_tokens": jnp.ones((2, 1), jnp.int32)})
  candidates = np.arange(10, 20)
  expected = np.argmax(np.asarray(logits)[:, 0, candidates], axis=-1)
  choice_tokens = [candidates[:, None].astype(np.int32)] * 2
  runner = inference.Inference(model, params, batch_size=8, show_progress=False)
  best, _ = runner.rank_classify(tokens, choice_tokens)
  np.testing.assert_array_equal(best, expected)


def test_decoding_weights_are_made_once_for_every_batch_and_call(model_and_params, monkeypatch):
  """On a CPU the engine makes the model's decoding weights once and decodes every batch
  (greedy and beam) from them, with the tokens `params` give; on an accelerator target it
  hands the decoders the params themselves."""
  from xltransfer.model import decoding, layers  # pylint: disable=import-outside-toplevel
  model, params = model_and_params
  made, received = [], []
  original_prepare = type(model).decoding_weights
  original_greedy = type(model).greedy_decode
  monkeypatch.setattr(type(model), "decoding_weights",
                      lambda self, p: made.append(1) or original_prepare(self, p))
  monkeypatch.setattr(type(model), "greedy_decode",
                      lambda self, p, *a: received.append(type(p)) or original_greedy(self, p, *a))
  tokens = _inputs()
  runner = inference.Inference(model, params, batch_size=2, show_progress=False)
  greedy = runner.decode(tokens, max_decode_length=6)
  runner.decode(tokens[:2], max_decode_length=6)
  beam = runner.decode(tokens, max_decode_length=5, beam_size=3, alpha=0.6)
  assert made == [1]
  assert received and set(received) == {decoding.DecodingWeights}  # traced once per shape
  np.testing.assert_array_equal(greedy, model.greedy_decode(params, jnp.asarray(tokens), 6))
  np.testing.assert_array_equal(beam, np.asarray(
      model.beam_search(params, jnp.asarray(tokens), 5, 3, 0.6)[0])[:, 0])

  monkeypatch.setattr(layers, "target_platform", lambda: "tpu")
  received.clear()
  accelerator = inference.Inference(model, params, batch_size=2, show_progress=False)
  np.testing.assert_array_equal(accelerator.decode(tokens, max_decode_length=6), greedy)
  assert made == [1] and received and all(t is dict for t in received)


def test_mesh_path_on_local_devices(model_and_params):
  model, params = model_and_params
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(-1, 1), ("data", "model"))
  tokens = _inputs()
  runner = inference.Inference(model, params, batch_size=len(jax.devices()) * 2, mesh=mesh,
                               show_progress=False)
  expected = np.asarray(model.greedy_decode(params, jnp.asarray(tokens), 6))
  np.testing.assert_array_equal(runner.decode(tokens, 6), expected)


def test_batch_size_must_divide_over_data_axis(model_and_params):
  model, params = model_and_params
  with pytest.raises(ConfigError, match="batch_size"):
    inference.Inference(model, params, batch_size=0)


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from xltransfer.evaluation import inference
    from xltransfer.model.config import get_config
    from xltransfer.model.models import EncoderDecoderModel
    from xltransfer.partitioning import Partitioner, standard_logical_axis_rules
    assert len(jax.devices()) == 4
    model = EncoderDecoderModel(get_config("tiny", vocab_size=64))
    params = model.init(jax.random.PRNGKey(0))
    tokens = np.random.RandomState(0).randint(2, 64, size=(7, 10)).astype(np.int32)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))
    runner = inference.Inference(model, params, batch_size=4,
                                 partitioner=Partitioner(mesh, standard_logical_axis_rules()),
                                 show_progress=False)
    leaf = runner.params["decoder"]["logits_dense"]["kernel"]
    assert len(leaf.sharding.device_set) == 4, leaf.sharding
    try:
      inference.Inference(model, params, batch_size=3, mesh=mesh)
      raise SystemExit("batch 3 over 2 data shards was accepted")
    except Exception as e:
      assert "not a multiple" in str(e), e
    expected = np.asarray(model.greedy_decode(params, jnp.asarray(tokens), 6))
    np.testing.assert_array_equal(runner.decode(tokens, 6), expected)
    targets = np.tile(np.array([[5, 6, 1]], np.int32), (7, 1))
    unsharded = inference.Inference(model, params, batch_size=7, show_progress=False)
    np.testing.assert_allclose(runner.score(tokens, targets), unsharded.score(tokens, targets),
                               rtol=1e-4, atol=1e-4)
    print("OK")
""")


@pytest.mark.slow
def test_sharded_over_a_data_and_model_mesh_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
