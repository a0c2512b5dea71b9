"""Greedy decoding with a key/value cache, at fixed shapes so a jitted decoder never recompiles.

The encoder runs once; cross-attention keys/values are projected once and cached; each step
feeds one token and appends its self-attention keys/values to the cache. The loop stops early
when every row has produced EOS, and positions after a row's EOS hold 0 (padding).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from xltransfer.model import layers
from xltransfer.model.argmax import argmax_last_axis


def weights_in_compute_dtype(params, dtype, logits_via_embedding: bool):
  """The matmul weights (every `kernel`; the `embedding` too when it gives the logits) cast
  once to the activation dtype.

  Every decoding step reads every matmul weight. Left float32, a bfloat16 model would read
  each float32 weight and write its bf16 copy on every step (for mT5's 250k x 512 output layer
  about 0.8 GB of memory traffic a token). The layers make the same cast themselves, so the
  result is bit for bit the same; norms and position biases stay float32. An embedding table
  that is only looked up (mT5's untied one) stays float32: a step gathers a few of its rows,
  and casting the whole table took longer than that (XLA:CPU even converted the bf16 copy
  back to float32 for the gather: two passes over 250k x 512 per decode).
  """
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return params
  names = ("kernel", "embedding") if logits_via_embedding else ("kernel",)

  def cast(path, x):
    name = getattr(path[-1], "key", None)
    if name in names and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x
  return jax.tree_util.tree_map_with_path(cast, params)


def decoding_variables(params, config):
  """The variables every decoding step reads: `params` with their matmul weights in the
  activation dtype (`weights_in_compute_dtype`) and, for an untied output layer in a
  low-precision model, its kernel transposed to [vocab, embed] (see network.DECODING_WEIGHTS).
  Both are made once per decode, inside its jit, where XLA fuses the cast and the transpose
  into one pass and drops the [embed, vocab] copy that no step reads.

  Greedy mT5-small, batch 16, 256 inputs, 64 new tokens, both forms alternating in one process
  (2-core AMD EPYC, 2026-12-01): bfloat16 4.19 -> 3.85 s (median of 8); 4 new tokens 1.09 ->
  1.06 s. A float32 model got slower with its kernel transposed (5.31 -> 6.07 s), so float32
  keeps the kernel as stored.
  """
  from xltransfer.model import network  # pylint: disable=import-outside-toplevel
  params = weights_in_compute_dtype(params, config.activation_dtype, config.logits_via_embedding)
  # Measured on XLA:CPU only: TPU and GPU keep the stored layout (and their sharding of it).
  if (config.logits_via_embedding or jnp.dtype(config.activation_dtype) == jnp.float32
      or layers.target_platform() != "cpu"):
    return {"params": params}
  kernel = params["decoder"]["logits_dense"]["kernel"]
  return {"params": params,
          network.DECODING_WEIGHTS: {"decoder": {network.VOCAB_MAJOR_LOGITS_KERNEL: kernel.T}}}


class DecodingWeights(NamedTuple):
  """`decoding_variables(params)` made once, to decode many batches with the same params.

  `greedy_decode` and `beam_search` take it in place of the parameter tree and then skip
  the per-call cast (and, on a CPU, the output kernel's transposition): for greedy
  mT5-small in bf16 (batch 16, 256 inputs, 64 new tokens) 1.735 -> 1.685 s per call, the same
  tokens (2-core AMD EPYC, same process, alternating). The price is a low-precision copy of
  the weights beside the float32 parameters while it is held.
  """
  variables: dict


def prepare_decoding(params, config) -> DecodingWeights:
  return DecodingWeights(decoding_variables(params, config))


def variables_for_decoding(params_or_weights, config):
  """The variables a decode reads: prepared ones as they are, else made from `params`."""
  if isinstance(params_or_weights, DecodingWeights):
    return params_or_weights.variables
  return decoding_variables(params_or_weights, config)


def greedy_decode(module, params, encoder_input_tokens, max_decode_length: int, eos_id: int = 1):
  """`params`: the parameter tree, or its `DecodingWeights`."""
  from xltransfer.model.network import Transformer  # Local: network imports nothing from here.

  weights = variables_for_decoding(params, module.config)
  encoded = module.apply(weights, encoder_input_tokens, method=Transformer.encode)
  batch = encoder_input_tokens.shape[0]

  def step(tokens, cache):
    variables = weights if cache is None else {**weights, "cache": cache}
    logits, mutated = module.apply(variables, encoded, encoder_input_tokens, tokens, decode=True,
                                   max_decode_length=max_decode_length, mutable=["cache"],
                                   method=Transformer.decode)
    return argmax_last_axis(logits[:, -1]), mutated["cache"]

  # Decoding starts from the pad id, as T5's decoder inputs are the targets shifted right.
  first, cache = step(jnp.zeros((batch, 1), jnp.int32), None)
  output = jnp.zeros((batch, max_decode_length), jnp.int32).at[:, 0].set(first)
  done = first == eos_id

  def keep_going(state):
    index, _, _, done, _ = state
    return (index < max_decode_length) & ~jnp.all(done)

  def body(state):
    index, output, previous, done, cache = state
    token, cache = step(previous[:, None], cache)
    token = jnp.where(done, 0, token)
    output = jax.lax.dynamic_update_slice(output, token[:, None], (0, index))
    return index + 1, output, token, done | (token == eos_id), cache

  state = (jnp.array(1, jnp.int32), output, first, done, cache)
  _, output, _, _, _ = jax.lax.while_loop(keep_going, body, state)
  return output
