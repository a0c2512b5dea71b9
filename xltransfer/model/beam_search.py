"""Beam search with a KV cache and a length penalty, at fixed shapes (one compile per shape).

Two sets of k beams are kept per example, as in T5X: *alive* beams ranked by raw
log-probability, which keep growing, and *finished* beams (ended by EOS) ranked by their
length-normalised score. The search stops when no alive beam can beat the worst finished one; beams alive at the
length limit compete with the finished ones at the end.
The length penalty is GNMT's ((5 + length) / 6) ** alpha; alpha = 0 ranks by log-probability.
"""
import jax
import jax.numpy as jnp

from xltransfer.model import losses

NEG_INF = -1.0e9


def length_penalty(length, alpha: float):
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, indices, batch, beams, batch_axis):
  """Reorders [.., batch*beams, ..] arrays (cache) by per-example beam indices [batch, k].

  Cross-attention keys and values are left as they are: an example's beams all attend to its
  one encoder output, so reordering them among themselves changes nothing, and skipping them
  saves copying the largest part of the cache on every step.
  """
  def gather(path, x):
    if any(getattr(key, "key", None) == "encoder_decoder_attention" for key in path):
      return x
    if x.ndim <= batch_axis:
      return x  # cache indices (scalars, or one per layer when scanned)
    shape = x.shape
    x = x.reshape(shape[:batch_axis] + (batch, beams) + shape[batch_axis + 1:])
    idx = indices.reshape((1,) * batch_axis + indices.shape + (1,) * (x.ndim - batch_axis - 2))
    x = jnp.take_along_axis(x, idx, axis=batch_axis + 1)
    return x.reshape(shape)
  return jax.tree_util.tree_map_with_path(gather, tree)


def _take(x, indices):
  """x [batch, k, ...] gathered along k by indices [batch, n]."""
  idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def beam_search(module, params, encoder_input_tokens, max_decode_length: int, beam_size: int,
                alpha: float = 0.6, eos_id: int = 1, cache_batch_axis: int = 0):
  """Returns (sequences [b, k, L], scores [b, k]), best first; 0 pads after EOS.

  `params`: the parameter tree, or its `decoding.DecodingWeights`. `cache_batch_axis` is 1
  for scanned models (their cache has a leading layer axis).
  """
  from xltransfer.model.decoding import variables_for_decoding
  from xltransfer.model.network import Transformer

  weights = variables_for_decoding(params, module.config)  # params or their DecodingWeights
  batch = encoder_input_tokens.shape[0]
  k = beam_size
  tokens_k = jnp.repeat(encoder_input_tokens, k, axis=0)
  # The encoder runs once per example; its output is copied to the example's k beams.
  encoded = jnp.repeat(module.apply(weights, encoder_input_tokens,
                                    method=Transformer.encode), k, axis=0)

  def step(tokens, cache):
    variables = weights if cache is None else {**weights, "cache": cache}
    logits, mutated = module.apply(variables, encoded, tokens_k, tokens.reshape(batch * k, 1),
                                   decode=True, max_decode_length=max_decode_length,
                                   mutable=["cache"], method=Transformer.decode)
    last = logits[:, -1].astype(jnp.float32)
    logprobs = last - losses.logsumexp_last_axis(last)[:, None]  # log softmax
    return logprobs.reshape(batch, k, -1), mutated["cache"]

  def expand(index, alive_seq, alive_lp, logprobs):
    vocab = logprobs.shape[-1]
    candidates = (alive_lp[..., None] + logprobs).reshape(batch, k * vocab)
    # 2k candidates guarantee k that do not end here, whatever the EOS count.
    top_lp, top_idx = jax.lax.top_k(candidates, 2 * k)
    parent, token = top_idx // vocab, top_idx % vocab
    seqs = _take(alive_seq, parent)
    seqs = jax.lax.dynamic_update_slice_in_dim(seqs, token[..., None].astype(jnp.int32), index,
                                               axis=2)
    return seqs, top_lp, parent, token == eos_id

  def update(state, logprobs):
    index, alive_seq, alive_lp, fin_seq, fin_score, cache = state
    seqs, top_lp, parent, ended = expand(index, alive_seq, alive_lp, logprobs)
    # Alive: the best k that did not end.
    alive_rank = jnp.where(ended, NEG_INF, top_lp)
    new_lp, pick = jax.lax.top_k(alive_rank, k)
    alive_seq = _take(seqs, pick)
    cache = _gather_beams(cache, _take(parent, pick), batch, k, cache_batch_axis)
    # Finished: merge the ones that ended now, scored with the length penalty.
    ended_score = jnp.where(ended, top_lp / length_penalty(index + 1.0, alpha), NEG_INF)
    all_seq = jnp.concatenate([fin_seq, seqs], axis=1)
    all_score = jnp.concatenate([fin_score, ended_score], axis=1)
    fin_score, pick = jax.lax.top_k(all_score, k)
    fin_seq = _take(all_seq, pick)
    return (index + 1, alive_seq, new_lp, fin_seq, fin_score, cache)

  empty = jnp.zeros((batch, k, max_decode_length), jnp.int32)
  # Only beam 0 is live at the start, so the first step does not pick k copies of one token.
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  logprobs, cache = step(jnp.zeros((batch, k), jnp.int32), None)
  state = update((jnp.array(0, jnp.int32), empty, alive_lp, empty,
                  jnp.full((batch, k), NEG_INF), cache), logprobs)

  def keep_going(state):
    index, _, alive_lp, _, fin_score, _ = state
    # Log-probabilities only fall, so an alive beam's best possible final score is its current
    # one under the largest penalty still reachable.
    best_alive = alive_lp[:, 0] / length_penalty(float(max_decode_length), alpha)
    worst_finished = jnp.min(fin_score, axis=1)
    return (index < max_decode_length) & ~jnp.all(worst_finished > best_alive)

  def body(state):
    index, alive_seq, _, _, _, cache = state
    last = jax.lax.dynamic_index_in_dim(alive_seq, index - 1, axis=2, keepdims=False)
    logprobs, cache = step(last, cache)
    return update(state[:5] + (cache,), logprobs)

  _, alive_seq, alive_lp, fin_seq, fin_score, _ = jax.lax.while_loop(keep_going, body, state)
  # Beams still alive at the length limit count as complete there (T5X returns them when
  # nothing finished); merging keeps whichever scores best.
  alive_score = alive_lp / length_penalty(float(max_decode_length), alpha)
  scores, pick = jax.lax.top_k(jnp.concatenate([fin_score, alive_score], axis=1), k)
  seqs = _take(jnp.concatenate([fin_seq, alive_seq], axis=1), pick)
  after_eos = jnp.cumsum(seqs == eos_id, axis=-1) - (seqs == eos_id) > 0
  return jnp.where(after_eos, 0, seqs), scores
