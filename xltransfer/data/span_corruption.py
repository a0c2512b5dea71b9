"""T5's span-corruption objective (noise density 0.15, mean span length 3), in tf.data.

A token sequence is cut into alternating non-noise and noise spans, starting with non-noise.
Noise span i is replaced in `inputs` by sentinel i, id `vocab_size - 1 - i` (<extra_id_i>: an
extra id seqio added, or the model's own piece in the released mT5 vocabulary), and `targets`
lists each noise span after its sentinel:

  tokens   a b c d e f g h          noise: c d, g
  inputs   a b <S0> e f <S1> h
  targets  <S0> c d <S1> g

so `reconstruct(inputs, targets)` gives back the original sequence.
"""

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0


def _noise_counts(length, noise_density, mean_span_length):
  """(noise tokens, noise spans) for a sequence of `length` >= 2 tokens, as T5 rounds them."""
  length_f = tf.cast(length, tf.float32)
  num_noise = tf.cast(tf.round(length_f * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_span_length), tf.int32)
  num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, length - num_noise))
  return num_noise, num_spans


def _random_segmentation(num_items, num_segments, seed):
  """Lengths of `num_segments` positive parts that sum to `num_items`, uniformly at random."""
  # Choose num_segments - 1 distinct cut points among the num_items - 1 gaps.
  scores = tf.random.stateless_uniform([num_items - 1], seed=seed)
  _, cuts = tf.math.top_k(scores, k=num_segments - 1)
  cuts = tf.sort(cuts + 1)
  bounds = tf.concat([[0], cuts, [num_items]], axis=0)
  return bounds[1:] - bounds[:-1]


def noise_mask(length, seed, noise_density=NOISE_DENSITY, mean_span_length=MEAN_SPAN_LENGTH):
  """Boolean [length] mask of noise tokens: alternating spans, non-noise first."""
  num_noise, num_spans = _noise_counts(length, noise_density, mean_span_length)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  keep_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
  # Interleave [keep_0, noise_0, keep_1, noise_1, ...] and paint each span.
  span_lengths = tf.reshape(tf.stack([keep_lengths, noise_lengths], axis=1), [-1])
  span_is_noise = tf.tile([False, True], [num_spans])
  return tf.repeat(span_is_noise, span_lengths)


def _replace_runs_with_sentinels(tokens, drop_mask, vocab_size):
  """Replaces each run of drop_mask tokens by one sentinel (run i -> vocab_size - 1 - i)."""
  previous = tf.concat([[False], drop_mask[:-1]], axis=0)
  run_start = drop_mask & ~previous
  sentinels = vocab_size - tf.cumsum(tf.cast(run_start, tokens.dtype))
  replaced = tf.where(run_start, sentinels, tokens)
  return tf.boolean_mask(replaced, ~drop_mask | run_start)


def corrupt_tokens(tokens, seed, vocab_size, noise_density=NOISE_DENSITY,
                   mean_span_length=MEAN_SPAN_LENGTH):
  """(inputs, targets) for one 1-D token sequence of at least 2 tokens."""
  mask = noise_mask(tf.size(tokens), seed, noise_density, mean_span_length)
  vocab_size = tf.cast(vocab_size, tokens.dtype)
  inputs = _replace_runs_with_sentinels(tokens, mask, vocab_size)
  # The non-noise spans come first, so run i of ~mask precedes noise span i.
  targets = _replace_runs_with_sentinels(tokens, ~mask, vocab_size)
  return inputs, targets


def span_corruption(dataset, output_features, noise_density=NOISE_DENSITY,
                    mean_span_length=MEAN_SPAN_LENGTH):
  """seqio preprocessor: `targets` tokens -> span-corrupted `inputs` and `targets`.

  Sequences shorter than 2 tokens cannot be corrupted and are dropped.
  """
  vocab = output_features["targets"].vocabulary
  dataset = dataset.filter(lambda ex: tf.size(ex["targets"]) >= 2)

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(ex, seed):
    inputs, targets = corrupt_tokens(ex["targets"], seed, vocab.vocab_size, noise_density,
                                     mean_span_length)
    return {"inputs": inputs, "targets": targets}

  return corrupt(dataset)


def raw_length_for(inputs_length: int, noise_density=NOISE_DENSITY,
                   mean_span_length=MEAN_SPAN_LENGTH) -> tuple:
  """(raw tokens per example, targets length) so that corrupted inputs + EOS fit exactly.

  For 512 inputs at the defaults this is (568, 114), T5's numbers.
  """
  def lengths(raw):
    noise = int(round(raw * noise_density))
    spans = max(1, int(round(noise / mean_span_length)))
    return raw - noise + spans + 1, noise + spans + 1

  raw = inputs_length
  while lengths(raw + 1)[0] <= inputs_length:
    raw += 1
  return raw, lengths(raw)[1]


def split_tokens(dataset, output_features, max_tokens: int = 568, feature="targets"):
  """seqio preprocessor: cuts each token sequence into pieces of at most max_tokens."""
  del output_features

  def split(ex):
    tokens = ex[feature]
    pieces = tf.RaggedTensor.from_row_lengths(
        tokens, _piece_lengths(tf.size(tokens, out_type=tf.int64), max_tokens))
    return tf.data.Dataset.from_tensor_slices({feature: pieces})

  return dataset.flat_map(split).map(lambda ex: {feature: ex[feature]})


def _piece_lengths(length, max_tokens):
  full = length // max_tokens
  rest = length - full * max_tokens
  lengths = tf.fill([full], tf.cast(max_tokens, tf.int64))
  return tf.cond(rest > 0, lambda: tf.concat([lengths, [rest]], 0), lambda: lengths)


def reconstruct(inputs, targets, vocab_size: int, num_sentinels: int = 100) -> list:
  """The original token sequence from corrupted inputs and targets (NumPy / lists, no EOS)."""
  first_sentinel = vocab_size - num_sentinels

  def is_sentinel(t):
    return t >= first_sentinel

  spans, current = {}, None
  for t in targets:
    if is_sentinel(t):
      current = int(t)
      spans[current] = []
    elif current is not None:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans.get(int(t), []) if is_sentinel(t) else [int(t)])
  return out
