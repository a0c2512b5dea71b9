"""The encoder-decoder model API used by the trainer and the evaluator.

`EncoderDecoderModel` wraps the flax `Transformer` with what a training or evaluation loop
needs: parameter initialisation and their logical axes, the loss on a feature-converter batch,
teacher-forced logits, per-example target log-likelihoods (rank classification), pooled
encoder embeddings (retrieval) and greedy decoding.
"""
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xltransfer.errors import ConfigError
from xltransfer.model import beam_search, decoding, losses
from xltransfer.model.argmax import argmax_last_axis
from xltransfer.model.config import MT5Config
from xltransfer.model.network import Transformer

EOS_ID = 1


class EncoderDecoderModel:

  # What a run's checkpoints record (train/checkpointing.py): resuming one kind as another is
  # refused.
  kind = "seq2seq"
  # Top-level subtrees of an mT5 checkpoint that this model does not hold (dropped on load).
  dropped_subtrees = ()
  # The batch features whose ids the loss looks up in the token embedding, and nothing else.
  token_id_features = ("encoder_input_tokens", "decoder_input_tokens")

  def __init__(self, config: MT5Config, z_loss: float = 1e-4, label_smoothing: float = 0.0,
               loss_normalizing_factor: losses.LossNormalizingFactor = None):
    if isinstance(loss_normalizing_factor, str) and (
        loss_normalizing_factor != losses.NUM_REAL_TARGET_TOKENS):
      raise ValueError(f"unknown loss_normalizing_factor {loss_normalizing_factor!r}")
    self.config = config
    self.module = Transformer(config)
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = loss_normalizing_factor

  # ---- parameters ----

  def _init_boxed(self, rng, input_length=8, target_length=8):
    encoder = jnp.ones((1, input_length), jnp.int32)
    decoder = jnp.ones((1, target_length), jnp.int32)
    return self.module.init(rng, encoder, decoder, decoder)["params"]

  def init(self, rng, input_length: int = 8, target_length: int = 8):
    """Randomly initialised float32 parameters (shapes do not depend on the lengths)."""
    return nn.unbox(self._init_boxed(rng, input_length, target_length))

  def abstract_params(self):
    """Parameter shapes and dtypes, computed without allocating anything."""
    boxed = jax.eval_shape(self._init_boxed, jax.random.PRNGKey(0))
    return nn.unbox(boxed)

  def param_logical_axes(self):
    """A tree of `PartitionSpec`s of logical axis names, one per parameter."""
    boxed = jax.eval_shape(self._init_boxed, jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)

  # ---- training ----

  def row_sparse_embedding_path(self):
    """The param path of the token embedding when the loss uses it only to look up the ids
    of `token_id_features` (its gradient is zero in every other row), else None: tied logits
    give every row a gradient."""
    if self.config.logits_via_embedding:
      return None
    return ("token_embedder", "embedding")

  def logits(self, params, batch, dropout_rng=None):
    if "encoder_input_tokens" not in batch:
      # E.g. a dual-encoder batch (query_tokens, candidate_tokens) given to this model.
      raise ConfigError(f"the encoder-decoder model needs EncDecFeatureConverter features; the "
                        f"batch has {sorted(batch)} (DatasetConfig.feature_converter = 'enc_dec')")
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params},
        batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        enable_dropout=dropout_rng is not None, rngs=rngs)

  def row_loss_weights(self, batch):
    """[b] float32: each row's target-token weight, what NUM_REAL_TARGET_TOKENS divides by
    (the trainer weights microbatches by it)."""
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = batch["decoder_target_tokens"] > 0
    return jnp.sum(weights.astype(jnp.float32), axis=-1)

  def loss_fn(self, params, batch, dropout_rng=None):
    """Loss on a feature-converter batch and summed metrics (see docs/interfaces.md)."""
    logits = self.logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    token_loss, token_z = losses.cross_entropy_with_z_loss(logits, targets, self.z_loss,
                                                           self.label_smoothing)
    total = jnp.sum(token_loss * weights)
    total_z = jnp.sum(token_z * weights)
    loss = losses.normalize_loss(total, weights, self.loss_normalizing_factor)
    z_loss = losses.normalize_loss(total_z, weights, self.loss_normalizing_factor)
    correct = (argmax_last_axis(logits) == targets).astype(jnp.float32) * weights
    segment_ids = batch.get("decoder_segment_ids")
    if segment_ids is None:
      num_examples = jnp.sum(jnp.any(targets > 0, axis=-1))
    else:
      # Packed rows hold several examples: count each segment that starts in the row.
      starts = (segment_ids > 0) & (segment_ids != jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1])
      num_examples = jnp.sum(starts)
    metrics = {
        "loss": loss,
        "z_loss": z_loss,
        "cross_ent_loss": loss - z_loss,
        "accuracy_correct": jnp.sum(correct),
        "num_tokens": jnp.sum(weights),
        "num_examples": num_examples.astype(jnp.float32),
    }
    metrics["accuracy"] = metrics["accuracy_correct"] / jnp.maximum(metrics["num_tokens"], 1.0)
    return loss, metrics

  # ---- inference ----

  def score_targets(self, params, batch):
    """Sum of target-token log-probabilities per example: [b] (for rank classification)."""
    logits = self.logits(params, batch).astype(jnp.float32)
    targets = batch["decoder_target_tokens"]
    # log softmax at the target only: its logit minus the row's logsumexp, without writing
    # the [b, t, vocab] log-probabilities.
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    token = target_logit - losses.logsumexp_last_axis(logits)
    return jnp.sum(token * (targets > 0), axis=-1)

  def encode(self, params, encoder_input_tokens, pooling: str = "mean"):
    """Encoder output pooled over non-padding tokens: [b, embed] float32 (for retrieval)."""
    encoded = self.module.apply({"params": params}, encoder_input_tokens,
                                method=Transformer.encode).astype(jnp.float32)
    mask = (encoder_input_tokens > 0).astype(jnp.float32)[..., None]
    if pooling == "mean":
      return jnp.sum(encoded * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    if pooling == "first":
      return encoded[:, 0]
    raise ValueError(f"unknown pooling {pooling!r}; use 'mean' or 'first'")

  def decoding_weights(self, params) -> decoding.DecodingWeights:
    """What every decode of `params` reads, made once (`decoding.DecodingWeights`): pass it to
    `greedy_decode` or `beam_search` in place of `params` to decode many batches."""
    return self._prepare_decoding(params)

  @functools.cached_property
  def _prepare_decoding(self):
    return jax.jit(functools.partial(decoding.prepare_decoding, config=self.config))

  def greedy_decode(self, params, encoder_input_tokens, max_decode_length: int):
    """Greedy decoding with a KV cache: [b, max_decode_length] tokens, 0 after EOS.
    `params`: the parameter tree or its `decoding_weights`."""
    return self._greedy_decode(params, encoder_input_tokens, max_decode_length)

  def beam_search(self, params, encoder_input_tokens, max_decode_length: int, beam_size: int,
                  alpha: float = 0.6):
    """Beam search: (sequences [b, beam, L] best first, length-normalised scores [b, beam]).
    `params`: the parameter tree or its `decoding_weights`."""
    return self._beam_search(params, encoder_input_tokens, max_decode_length, beam_size, alpha)

  @functools.cached_property
  def _beam_search(self):
    search = functools.partial(beam_search.beam_search, self.module, eos_id=EOS_ID,
                               cache_batch_axis=1 if self.config.scan_layers else 0)
    return jax.jit(search, static_argnums=(2, 3, 4))

  @functools.cached_property
  def _greedy_decode(self):
    return jax.jit(functools.partial(decoding.greedy_decode, self.module, eos_id=EOS_ID),
                   static_argnums=(2,))
