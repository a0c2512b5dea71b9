"""The cross entropy's hand-written gradient against autodiff of its textbook definition."""
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.model import layers, losses


def _reference(logits, targets, z_loss, label_smoothing):
  """Cross entropy against a smoothed one-hot, written out with a dense one-hot (T5X's form)."""
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  entropy = 0.0
  if label_smoothing > 0:
    entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
  z = z_loss * jnp.square(log_z)
  return -jnp.sum(soft * log_probs, axis=-1) - entropy + z, z


@pytest.mark.parametrize("z_loss,label_smoothing", itertools.product([0.0, 1e-4, 0.3], [0.0, 0.1]))
def test_values_and_gradients_match_autodiff_of_the_definition(z_loss, label_smoothing):
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (2, 5, 37)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 37, (2, 5)), jnp.int32)
  # Both outputs carry weight, as the total loss and the reported z-loss do in a train step.
  weights_total = jnp.asarray(rng.uniform(0, 1, (2, 5)), jnp.float32)
  weights_z = jnp.asarray(rng.uniform(0, 1, (2, 5)), jnp.float32)

  def scalar(fn):
    def run(x):
      total, z = fn(x, targets, z_loss, label_smoothing)
      return jnp.sum(total * weights_total) + jnp.sum(z * weights_z)
    return run

  ours = losses.cross_entropy_with_z_loss(logits, targets, z_loss, label_smoothing)
  expected = _reference(logits, targets, z_loss, label_smoothing)
  for got, want in zip(ours, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.grad(scalar(losses.cross_entropy_with_z_loss))(logits),
                             jax.grad(scalar(_reference))(logits), rtol=1e-5, atol=1e-6)


def test_gradient_of_bf16_logits_comes_back_in_their_dtype_and_jit_compiles():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 11)), jnp.bfloat16)
  targets = jnp.array([0, 5, 10], jnp.int32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(losses.cross_entropy_with_z_loss(x, targets, 1e-4)[0])))(
      logits)
  assert grad.dtype == jnp.bfloat16
  # Softmax minus the label's one-hot: each row sums to (about) zero and is negative at the label.
  np.testing.assert_allclose(np.asarray(grad, np.float32).sum(-1), 0.0, atol=0.02)
  assert all(np.asarray(grad, np.float32)[i, t] < 0 for i, t in enumerate([0, 5, 10]))


def test_a_perfect_smoothed_prediction_scores_zero():
  vocab, smoothing = 7, 0.2
  probs = np.full(vocab, smoothing / (vocab - 1))
  probs[3] = 1 - smoothing
  logits = jnp.asarray(np.log(probs)[None], jnp.float32)
  loss, _ = losses.cross_entropy_with_z_loss(logits, jnp.array([3]), 0.0, smoothing)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def _autodiff_form(logits, targets, z_loss, label_smoothing):
  """The same loss left to autodiff (log-sum-exp minus the label's logit), without smoothing."""
  assert label_smoothing == 0
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  z = z_loss * jnp.square(log_z)
  return log_z - target_logit + z, z


def test_the_output_layer_gradient_needs_less_memory_than_autodiff():
  """Autodiff keeps the softmax numerators ([b, t, V] float32: 1 GiB for an mT5-small batch of
  8 x 128 targets) from the forward pass to the backward one; the hand-written gradient
  recomputes them in the pass that writes the gradient. Measured on the output layer as the
  model runs it in bfloat16 (a `mixed_einsum` into float32 logits)."""
  batch, length, depth, vocab = 4, 64, 64, 8192
  hidden = jax.ShapeDtypeStruct((batch, length, depth), jnp.bfloat16)
  kernel = jax.ShapeDtypeStruct((depth, vocab), jnp.bfloat16)
  targets = jnp.zeros((batch, length), jnp.int32)

  def temp_bytes(loss_fn):
    def total(x, w):
      logits = layers.mixed_einsum("bld,dv->blv", x, w)
      return jnp.sum(loss_fn(logits, targets, 1e-4, 0.0)[0])
    grad = jax.jit(jax.grad(total, argnums=(0, 1)))
    return grad.lower(hidden, kernel).compile().memory_analysis().temp_size_in_bytes

  vocab_sized = 4 * batch * length * vocab
  ours, autodiff = temp_bytes(losses.cross_entropy_with_z_loss), temp_bytes(_autodiff_form)
  assert ours + 0.4 * vocab_sized <= autodiff, (ours / vocab_sized, autodiff / vocab_sized)


def test_chunked_logsumexp_equals_the_plain_one_on_a_cpu():
  """The vocabulary logsumexp taken per chunk of 128 (one pass over the logits on XLA:CPU)
  against jax.nn.logsumexp: ordinary rows, rows far from zero, a row whose largest logits sit
  in one chunk, masked (-inf) chunks, an all -inf row and a +inf logit."""
  rng = np.random.default_rng(1)
  vocab = 4 * losses.LOGSUMEXP_CHUNK
  rows = rng.normal(0, 3, (8, vocab)).astype(np.float32)
  rows[1] += 5000.0
  rows[2] -= 5000.0
  rows[3, 130] = 60.0
  rows[4, :128] = -np.inf
  rows[5, 128:] = -np.inf
  rows[5, :128] -= 200.0  # far below 0: the masked chunks must not rescale by exp(+200)
  rows[6] = -np.inf
  rows[7, 300] = np.inf
  got = np.asarray(jax.jit(losses.logsumexp_last_axis)(jnp.asarray(rows)))
  want = np.asarray(jax.nn.logsumexp(jnp.asarray(rows), axis=-1))
  np.testing.assert_allclose(got[:6], want[:6], rtol=2e-7, atol=0)
  assert got[6] == -np.inf and want[6] == -np.inf
  assert got[7] == np.inf and want[7] == np.inf
  # Leading axes are kept, as for the [batch, length, vocab] logits of a train step.
  batched = np.asarray(losses.logsumexp_last_axis(jnp.asarray(rows[:6].reshape(2, 3, vocab))))
  np.testing.assert_allclose(batched, want[:6].reshape(2, 3), rtol=2e-7)


def test_chunked_logsumexp_reads_the_logits_twice():
  """The chunk maxima, then the shifted exponentials: two passes over the [tokens, vocab]
  logits (1 GB each in an mT5-small step), the row maximum taken from the chunk maxima. XLA
  merges a reduce of a reduce into one reduce over the logits, a third pass (94 -> 66 ms on
  [1024, 250112] once kept apart); count the instructions that read the logits."""
  text = jax.jit(losses.logsumexp_last_axis).lower(jnp.ones((4, 1024))).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  logits = {re.search(r"%([\w.\-]+) = f32\[4,1024\]\S* parameter\(0\)", entry).group(1)}
  readers = []
  for line in entry.splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ (\w[\w-]*)\((.*?)\)", line)
    if not match or not logits & set(re.findall(r"%([\w.\-]+)", match.group(3))):
      continue
    if match.group(2) == "bitcast":  # a view of the logits, not a pass over them
      logits.add(match.group(1))
    else:
      readers.append(line.strip()[:120])
  assert len(readers) == 2, readers


def test_chunked_logsumexp_is_used_only_where_it_applies(monkeypatch):
  """The chunked form runs on a CPU target for a last axis of whole chunks; other sizes and
  other targets (whose vocabulary axis may be sharded) take jax.nn.logsumexp."""
  def reshapes(x):
    # A fresh function each time: make_jaxpr caches traces by function, not by platform.
    jaxpr = jax.make_jaxpr(lambda y: losses.logsumexp_last_axis(y))(x)
    return any(eqn.primitive.name == "reshape" for eqn in jaxpr.jaxpr.eqns)

  assert reshapes(jnp.zeros((2, 512)))
  assert not reshapes(jnp.zeros((2, 500)))  # not whole chunks
  assert not reshapes(jnp.zeros((2, 128)))  # a single chunk
  monkeypatch.setattr(layers, "target_platform", lambda: "tpu")
  assert not reshapes(jnp.zeros((2, 512)))


def test_train_loss_on_a_large_vocabulary_matches_the_definition():
  """The loss and its gradient where the chunked logsumexp runs (a vocabulary of whole
  chunks), against autodiff of the textbook definition."""
  rng = np.random.default_rng(2)
  vocab = 3 * losses.LOGSUMEXP_CHUNK
  logits = jnp.asarray(rng.normal(0, 4, (3, 7, vocab)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, (3, 7)), jnp.int32)

  def total(fn):
    return lambda x: jnp.sum(fn(x, targets, 1e-4, 0.1)[0])

  ours = lambda x, t, z, s: losses.cross_entropy_with_z_loss(x, t, z, s)
  np.testing.assert_allclose(total(ours)(logits), total(_reference)(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(total(ours))(logits), jax.grad(total(_reference))(logits),
                             rtol=1e-5, atol=1e-7)
