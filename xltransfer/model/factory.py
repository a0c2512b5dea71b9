"""Gin-configurable constructors for the model (the model package itself stays gin-free)."""
from typing import Any, Dict, Optional

import gin

from xltransfer.model.config import get_config
from xltransfer.model.dual_encoder import DualEncoderModel
from xltransfer.model.models import EncoderDecoderModel


@gin.configurable(module="xltransfer.model")
def mt5_config(size: str = gin.REQUIRED, dropout_rate: Optional[float] = None,
               overrides: Optional[Dict[str, Any]] = None):
  """An `MT5Config` of a named size (tiny/small/base/large/xl/xxl) with field overrides."""
  fields = dict(overrides or {})
  if dropout_rate is not None:
    fields["dropout_rate"] = float(dropout_rate)
  return get_config(size, **fields)


@gin.configurable(module="xltransfer.model")
def encoder_decoder_model(config=gin.REQUIRED, z_loss: float = 1e-4, label_smoothing: float = 0.0,
                          loss_normalizing_factor=None) -> EncoderDecoderModel:
  return EncoderDecoderModel(config, z_loss=z_loss, label_smoothing=label_smoothing,
                             loss_normalizing_factor=loss_normalizing_factor)


@gin.configurable(module="xltransfer.model")
def dual_encoder_model(config=gin.REQUIRED, temperature: float = 0.05,
                       symmetric: bool = False) -> DualEncoderModel:
  """The contrastive dual encoder on the same network (gin/models/dual_encoder.gin picks it);
  its batches come from DatasetConfig.feature_converter = 'dual_encoder'."""
  return DualEncoderModel(config, temperature=temperature, symmetric=symmetric)
