"""`EvalSettings`: how to evaluate (gin: `xltransfer.evaluation.EvalSettings.<field>`)."""
import dataclasses
import json
from typing import Dict, Optional

import gin

from xltransfer.errors import ConfigError


@gin.configurable(module="xltransfer.evaluation")
@dataclasses.dataclass
class EvalSettings:
  """How to evaluate (gin: `xltransfer.evaluation.EvalSettings.<field>`).

  split: the split to read; a task without it falls back to `validation`, then its first split
    (TyDiQA-GoldP has only dev, XQuAD only test). The split used is in eval_info.json.
  task_feature_lengths: inputs are cut to `inputs` tokens; `targets` is the decode length
    unless `max_decode_length` is set, and the length of rank-classification choices.
  batch_size: global rows per device step (fixed; the last batch is padded).
  beam_size, alpha: beam search (length penalty alpha) when beam_size > 1, else greedy.
  retrieval_layer: encoder layer for retrieval embeddings (0-based); None: the final output.
  candidate_chunk: candidates per device step of the nearest-neighbour search.
  max_examples: evaluate only the first N examples of each task (smoke tests).
  require_gold: a task without gold fails (before inference) instead of getting predictions
    only; `xltransfer study` sets it, so that a study never lacks a number silently.
  no_overwrite: refuse an output directory holding another checkpoint's, step's or settings'
    outputs instead of recomputing them (`xltransfer eval --no_overwrite`).
  """
  split: str = "test"
  task_feature_lengths: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {"inputs": 512, "targets": 128})
  batch_size: int = 32
  beam_size: int = 1
  alpha: float = 0.6
  max_decode_length: Optional[int] = None
  retrieval_layer: Optional[int] = None
  candidate_chunk: int = 65536
  max_examples: Optional[int] = None
  require_gold: bool = False
  no_overwrite: bool = False

  def __post_init__(self):
    missing = {"inputs", "targets"} - set(self.task_feature_lengths)
    if missing:
      raise ConfigError(f"EvalSettings.task_feature_lengths needs {sorted(missing)} "
                        f"(got {self.task_feature_lengths})")

  @property
  def decode_length(self) -> int:
    return self.max_decode_length or self.task_feature_lengths["targets"]

  def prediction_settings(self) -> dict:
    """The settings that change predictions (as JSON): a predictions file made with other
    values is not reused. Batch size and candidate chunking change only the speed."""
    return json.loads(json.dumps({
        "task_feature_lengths": dict(self.task_feature_lengths), "beam_size": self.beam_size,
        "alpha": self.alpha if self.beam_size > 1 else None,
        "decode_length": self.decode_length, "retrieval_layer": self.retrieval_layer,
        "max_examples": self.max_examples}))
