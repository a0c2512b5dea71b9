"""In-memory parameter-tree layout helpers: expected shapes of a config, and the unscanned
(`layers_{i}`) <-> scanned (`layers`, layer axis 1) conversion of host arrays (for the HF
importer/exporter and tests; `tree_utils` does the same lazily for array-by-array loading)."""
from typing import Dict, Tuple

import numpy as np

from xltransfer.checkpoints import tree_utils
from xltransfer.model.config import MT5Config

SCAN_AXIS = tree_utils.SCAN_AXIS


# One implementation of flat names for every importer.
flatten = tree_utils.flatten_tree
unflatten = tree_utils.unflatten_tree


def expected_param_shapes(config: MT5Config) -> Dict[str, Tuple[int, ...]]:
  """Flat name -> shape of every parameter of `config`, computed without allocating."""
  from xltransfer.model.models import EncoderDecoderModel

  abstract = EncoderDecoderModel(config).abstract_params()
  return {name: tuple(leaf.shape) for name, leaf in flatten(_to_dict(abstract)).items()}


def _to_dict(tree):
  if hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def stack_layers(params: dict, config: MT5Config) -> dict:
  """Unscanned params -> scanned: `encoder/layers_{i}/X` become `encoder/layers/X` stacked at
  axis 1 (the layout of `scan_layers=True`)."""
  params = _to_dict(params)
  out = {}
  for stack, count in (("encoder", config.num_encoder_layers),
                       ("decoder", config.num_decoder_layers)):
    if stack not in params:
      continue  # A dual encoder's tree has no decoder.
    sub = dict(params[stack])
    layers = [flatten(sub.pop(f"layers_{i}")) for i in range(count)]
    stacked = {name: np.stack([np.asarray(layer[name]) for layer in layers], axis=SCAN_AXIS)
               for name in layers[0]}
    sub["layers"] = unflatten(stacked)
    out[stack] = sub
  for key, value in params.items():
    if key not in out:
      out[key] = value
  return out


def unstack_layers(params: dict, config: MT5Config) -> dict:
  """The inverse of `stack_layers`."""
  params = _to_dict(params)
  out = {}
  for stack in ("encoder", "decoder"):
    if stack not in params:
      continue
    sub = dict(params[stack])
    stacked = flatten(sub.pop("layers"))
    count = next(iter(stacked.values())).shape[SCAN_AXIS]
    for i in range(count):
      sub[f"layers_{i}"] = unflatten(
          {name: np.take(np.asarray(value), i, axis=SCAN_AXIS) for name, value in stacked.items()})
    out[stack] = sub
  for key, value in params.items():
    if key not in out:
      out[key] = value
  return out
