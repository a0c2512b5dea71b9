"""Feature converters: how a task's `inputs`/`targets` tokens become a model's batch.

  "enc_dec"       seqio's `EncDecFeatureConverter` (packing optional): the seq2seq model's
                  encoder_input_tokens, decoder_{input,target}_tokens, decoder_loss_weights.
  "dual_encoder"  `DualEncoderFeatureConverter`: one (query, positive candidate) pair per row,
                  never packed: `query_tokens` from `inputs`, `candidate_tokens` from `targets`
                  (the retrieval training tasks put the query in `inputs`).

TASK_FEATURE_LENGTHS has the keys `inputs` and `targets` for both; for the dual encoder they
are the query and candidate lengths. `model_feature_lengths` states each converter's batch
features as plain data, for the planner where seqio is not installed.
"""
import functools
import numbers
from typing import Dict, Mapping

from xltransfer.errors import ConfigError
from xltransfer.model.dual_encoder import CANDIDATE_FEATURE, QUERY_FEATURE

ENC_DEC = "enc_dec"
DUAL_ENCODER = "dual_encoder"
NAMES = (ENC_DEC, DUAL_ENCODER)
TASK_FEATURES = ("inputs", "targets")


# Each converter's model features (all int32) and the task feature whose length each takes, as
# seqio's converters make them (tests/test_plan_without_seqio.py converts a dataset with each
# and compares).
_ENC_DEC_FEATURES = {"encoder_input_tokens": "inputs", "decoder_target_tokens": "targets",
                     "decoder_input_tokens": "targets", "decoder_loss_weights": "targets"}
_ENC_DEC_PACKING_FEATURES = {"encoder_segment_ids": "inputs", "encoder_positions": "inputs",
                             "decoder_segment_ids": "targets", "decoder_positions": "targets"}
_DUAL_ENCODER_FEATURES = {QUERY_FEATURE: "inputs", CANDIDATE_FEATURE: "targets"}


# DatasetConfig checks its converter while a config is parsed: seqio and TensorFlow (seconds
# to import) are imported only when a converter is made.
_PACKED_DUAL_ENCODER = ("the dual encoder's batches cannot be packed: set DatasetConfig.pack = "
                        "False (gin/models/dual_encoder.gin does, when loaded after the run file)")


@functools.lru_cache(maxsize=None)
def _dual_encoder_converter_class():
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  class DualEncoderFeatureConverter(seqio.FeatureConverter):
    """(query, candidate) token pairs, trimmed and zero-padded to their lengths."""

    TASK_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                     for k in TASK_FEATURES}
    MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                      for k in (QUERY_FEATURE, CANDIDATE_FEATURE)}
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, **kwargs):
      if pack:
        # Packing would put several pairs in a row; in-batch negatives need one pair per row.
        raise ConfigError(_PACKED_DUAL_ENCODER)
      super().__init__(pack=False, **kwargs)

    def _convert_features(self, ds: "tf.data.Dataset",
                          task_feature_lengths: Mapping[str, int]) -> "tf.data.Dataset":
      ds = self._pack_or_pad(ds, task_feature_lengths)
      return ds.map(lambda ex: {QUERY_FEATURE: ex["inputs"], CANDIDATE_FEATURE: ex["targets"]},
                    num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> Mapping[str, int]:
      return {QUERY_FEATURE: task_feature_lengths["inputs"],
              CANDIDATE_FEATURE: task_feature_lengths["targets"]}

  DualEncoderFeatureConverter.__module__ = __name__
  return DualEncoderFeatureConverter


def __getattr__(name):
  # `feature_converters.DualEncoderFeatureConverter`, made on first use (see above).
  if name == "DualEncoderFeatureConverter":
    return _dual_encoder_converter_class()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check(name: str, task_feature_lengths: Mapping[str, int], pack: bool) -> None:
  """ConfigError, naming the setting, for a converter name, lengths or packing that cannot work."""
  if name not in NAMES:
    raise ConfigError(f"DatasetConfig.feature_converter {name!r}: use one of {NAMES}")
  keys = set(task_feature_lengths)
  if keys != set(TASK_FEATURES):
    meaning = ("'inputs' (query tokens) and 'targets' (candidate tokens)" if name == DUAL_ENCODER
               else "'inputs' and 'targets'")
    raise ConfigError(f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths)}: the {name} feature "
                      f"converter needs exactly the keys {meaning}")
  for key, length in task_feature_lengths.items():
    if not isinstance(length, numbers.Integral) or isinstance(length, bool) or length <= 0:
      raise ConfigError(f"TASK_FEATURE_LENGTHS[{key!r}] must be a positive integer, got {length!r}")
  if name == DUAL_ENCODER and pack:
    raise ConfigError(_PACKED_DUAL_ENCODER)


def make(name: str, pack: bool):
  """The seqio.FeatureConverter named `name`."""
  if name == DUAL_ENCODER:
    return _dual_encoder_converter_class()(pack=pack)
  import seqio  # pylint: disable=import-outside-toplevel
  return seqio.EncDecFeatureConverter(pack=pack)


def model_feature_lengths(name: str, pack: bool,
                          task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
  """The batch features (name -> length; all int32) of converter `name`, as
  `make(name, pack).get_model_feature_lengths` gives them, without importing seqio."""
  check(name, task_feature_lengths, pack)
  if name == DUAL_ENCODER:
    features = _DUAL_ENCODER_FEATURES
  else:
    features = {**_ENC_DEC_FEATURES, **(_ENC_DEC_PACKING_FEATURES if pack else {})}
  return {feature: task_feature_lengths[task_feature] for feature, task_feature in features.items()}
