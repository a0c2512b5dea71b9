"""The mT5 (T5 v1.1) encoder-decoder network in flax, with T5X's parameter tree.

Parameter names match T5X one to one (`encoder/layers_0/attention/query/kernel`, ...), so T5X
checkpoints load without renaming. With `scan_layers` the layers of a stack become one
`layers` sub-tree whose parameters carry a layer axis at position 1, as in T5X.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from xltransfer.model import layers
from xltransfer.model.config import MT5Config

# "minimal" saves the products without batch axes (dense and output layers; attention's are
# recomputed): plain dot_generals in float32, `mixed_einsum` products (bf16 operands) by the
# name it gives them, since the policy cannot see into their custom VJP.
REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        jax.checkpoint_policies.save_only_these_names(layers.NO_BATCH_PRODUCT)),
    "full": jax.checkpoint_policies.nothing_saveable,
}


class EncoderLayer(nn.Module):
  config: MT5Config
  deterministic: bool = True
  scanned: bool = False

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    dtype = cfg.activation_dtype
    x = layers.constrain(x, ("batch", "length", "embed"))
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                                  name="attention")(h, h, bias, self.deterministic)
    x = x + layers.dropout(h, cfg.dropout_rate, self.deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = layers.GatedGeluMlp(cfg.mlp_dim, cfg.dropout_rate, dtype, name="mlp")(h, self.deterministic)
    x = x + layers.dropout(h, cfg.dropout_rate, self.deterministic)
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  config: MT5Config
  deterministic: bool = True
  decode: bool = False
  decode_length: int = 0
  scanned: bool = False

  @nn.compact
  def __call__(self, x, encoded, self_bias, cross_bias):
    cfg = self.config
    dtype = cfg.activation_dtype
    x = layers.constrain(x, ("batch", "length", "embed"))
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(x)
    h = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                                  name="self_attention")(h, h, self_bias, self.deterministic,
                                                         decode=self.decode,
                                                         decode_length=self.decode_length)
    x = x + layers.dropout(h, cfg.dropout_rate, self.deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(x)
    h = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                                  static_kv=True, name="encoder_decoder_attention")(
                                      h, encoded, cross_bias, self.deterministic,
                                      decode=self.decode)
    x = x + layers.dropout(h, cfg.dropout_rate, self.deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = layers.GatedGeluMlp(cfg.mlp_dim, cfg.dropout_rate, dtype, name="mlp")(h, self.deterministic)
    x = x + layers.dropout(h, cfg.dropout_rate, self.deterministic)
    return (x, None) if self.scanned else x


def _run_stack(parent: nn.Module, layer_cls, num_layers: int, x, *args, **layer_kwargs):
  """Applies `num_layers` layers, unrolled (`layers_{i}`) or scanned (`layers`), with remat."""
  cfg = parent.config
  if cfg.remat_policy != "none":
    layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy],
                         prevent_cse=not cfg.scan_layers)
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer_cls(cfg, name=f"layers_{i}", **layer_kwargs)(x, *args)
    return x
  stack = nn.scan(layer_cls,
                  variable_axes={"params": 1, "cache": 0},
                  split_rngs={"params": True, "dropout": True},
                  in_axes=(nn.broadcast,) * len(args),
                  length=num_layers,
                  metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = stack(cfg, scanned=True, name="layers", **layer_kwargs)(x, *args)
  return x


class Encoder(nn.Module):
  config: MT5Config
  token_embedder: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, deterministic=True):
    cfg = self.config
    length = tokens.shape[1]
    mask = tokens > 0
    bias = layers.attention_mask_bias(mask, mask, query_segments=segment_ids,
                                      key_segments=segment_ids)
    bias = layers.add_position_bias(bias, layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=True, dtype=cfg.activation_dtype, name="relpos_bias")(length, length))
    x = layers.dropout(self.token_embedder(tokens), cfg.dropout_rate, deterministic)
    x = _run_stack(self, EncoderLayer, cfg.num_encoder_layers, x, bias,
                   deterministic=deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
    return layers.dropout(x, cfg.dropout_rate, deterministic)


# A decoding step's output layer multiplies a few rows by the [embed, vocab] kernel (512 x 250k
# for mT5), which XLA:CPU's bf16 GEMM runs about 10% faster with the kernel vocab-major,
# [vocab, embed]. Low-precision decoding hands the decoder that copy in this collection
# (decoding.decoding_variables); teacher-forced steps never see it.
DECODING_WEIGHTS = "decoding_weights"
VOCAB_MAJOR_LOGITS_KERNEL = "logits_kernel_vocab_major"


class Decoder(nn.Module):
  config: MT5Config
  token_embedder: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, deterministic=True,
               decode=False, max_decode_length=None):
    cfg = self.config
    length = decoder_input_tokens.shape[1]
    relpos = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=False, dtype=cfg.activation_dtype, name="relpos_bias")
    if decode:
      # The cache masks positions not yet decoded, so only the position bias is passed; it
      # spans the whole decode length and each step takes its row.
      if not max_decode_length:
        raise ValueError("decode=True needs max_decode_length (the size of the KV cache)")
      self_bias = relpos(max_decode_length, max_decode_length)
      cross_bias = jnp.where(encoder_mask, 0.0, layers.MASK_BIAS)[:, None, None, :]
    else:
      targets = decoder_target_tokens if decoder_target_tokens is not None else decoder_input_tokens
      decoder_mask = targets > 0
      self_bias = layers.attention_mask_bias(decoder_mask, decoder_mask, causal=True,
                                             query_segments=decoder_segment_ids,
                                             key_segments=decoder_segment_ids)
      self_bias = layers.add_position_bias(self_bias, relpos(length, length))
      cross_bias = layers.attention_mask_bias(decoder_mask, encoder_mask,
                                              query_segments=decoder_segment_ids,
                                              key_segments=encoder_segment_ids)
    x = layers.dropout(self.token_embedder(decoder_input_tokens), cfg.dropout_rate, deterministic)
    x = _run_stack(self, DecoderLayer, cfg.num_decoder_layers, x, encoded, self_bias, cross_bias,
                   deterministic=deterministic, decode=decode,
                   decode_length=max_decode_length or 0)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(x)
    x = layers.dropout(x, cfg.dropout_rate, deterministic)
    if cfg.logits_via_embedding:
      # Tied output (T5 v1.0): rescale as the input embedding is not scaled down.
      logits = self.token_embedder.attend(x) / jnp.sqrt(x.shape[-1]).astype(x.dtype)
    elif decode and self.has_variable(DECODING_WEIGHTS, VOCAB_MAJOR_LOGITS_KERNEL):
      # `logits_dense`'s kernel, transposed once per decode (decoding.decoding_variables).
      kernel = self.get_variable(DECODING_WEIGHTS, VOCAB_MAJOR_LOGITS_KERNEL)
      logits = layers.dense_2d(x.astype(cfg.activation_dtype),
                               kernel.astype(cfg.activation_dtype), kernel_contracting_axis=1)
    else:
      # Operands in the activation dtype, accumulation and logits in float32.
      logits = layers.Dense(cfg.vocab_size, kernel_axes=("embed", "vocab"),
                            dtype=cfg.activation_dtype, out_dtype=jnp.float32,
                            name="logits_dense")(x)
    logits = logits.astype(jnp.float32)
    return layers.constrain(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """mT5: shared token embedding, encoder, decoder with its own output projection."""
  config: MT5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=False):
    return self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic=not enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
             enable_dropout=False, decode=False, max_decode_length=None):
    return self.decoder(encoded, encoder_input_tokens > 0, decoder_input_tokens,
                        decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, enable_dropout=False):
    # Positions are implied: packed segments are contiguous, so relative distances within a
    # segment equal those of `arange`; the arguments exist for feature-converter batches.
    del encoder_positions, decoder_positions
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, enable_dropout)
