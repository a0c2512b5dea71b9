"""Model FLOPs of one training step, counted from the config: the encoder-decoder mT5, and the
dual encoder (the encoder alone, run on the query and on the candidate of each pair).

MFU is defined on model FLOPs (matmuls of the forward pass ×3 for forward + backward;
rematerialisation does not count), so the ceiling it implies is comparable across remat
policies. XLA's own count (`cost_analysis`) is reported beside it: it counts a scanned
layer's body once, not once per layer, so it is far lower when `scan_layers` is on.
"""
from typing import Mapping

from xltransfer.model.config import MT5Config


def _layer_parts(config: MT5Config):
  d, f = config.emb_dim, config.mlp_dim
  inner = config.num_heads * config.head_dim
  gated_mlp = 2 * 3 * d * f          # wi_0, wi_1, wo
  projections = 2 * 4 * d * inner    # query, key, value, out
  return inner, gated_mlp, projections


def encoder_forward_flops(config: MT5Config, length: int) -> int:
  """Multiply-adds ×2 of the encoder stack on one row of `length` tokens."""
  inner, gated_mlp, projections = _layer_parts(config)
  layer = length * (projections + gated_mlp) + 2 * 2 * length * length * inner
  return config.num_encoder_layers * layer


def forward_flops_per_example(config: MT5Config, inputs_length: int, targets_length: int) -> int:
  """Multiply-adds ×2 of one example's forward pass (full-length, packed rows)."""
  d, v = config.emb_dim, config.vocab_size
  inner, gated_mlp, projections = _layer_parts(config)
  li, lt = inputs_length, targets_length
  decoder_layer = (lt * (projections + gated_mlp) + 2 * 2 * lt * lt * inner       # self-attn
                   + lt * 2 * 2 * d * inner + li * 2 * 2 * d * inner               # cross q,o / k,v
                   + 2 * 2 * lt * li * inner)                                      # cross scores
  logits = lt * 2 * d * v
  return (encoder_forward_flops(config, li) + config.num_decoder_layers * decoder_layer
          + logits)


def train_flops_per_step(config: MT5Config, batch_size: int, inputs_length: int,
                         targets_length: int) -> int:
  """Forward and backward (3× forward) over the global batch."""
  return 3 * batch_size * forward_flops_per_example(config, inputs_length, targets_length)


def dual_encoder_train_flops_per_step(config: MT5Config, batch_size: int, query_length: int,
                                      candidate_length: int) -> int:
  """Forward and backward of the dual encoder: the encoder on each query and each candidate,
  and every query scored against the batch's candidates."""
  per_pair = (encoder_forward_flops(config, query_length)
              + encoder_forward_flops(config, candidate_length)
              + 2 * batch_size * config.emb_dim)
  return 3 * batch_size * per_pair


def model_train_flops_per_step(model, batch_size: int, lengths: Mapping[str, int]) -> int:
  """The count for `model`'s kind; `lengths` are TASK_FEATURE_LENGTHS (inputs, targets)."""
  if model.kind == "dual_encoder":
    return dual_encoder_train_flops_per_step(model.config, batch_size, lengths["inputs"],
                                             lengths["targets"])
  return train_flops_per_step(model.config, batch_size, lengths["inputs"], lengths["targets"])
