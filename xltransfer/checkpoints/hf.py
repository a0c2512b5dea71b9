"""Hugging Face `MT5ForConditionalGeneration` weights <-> xltransfer (T5X-named) parameters.

HF stores `nn.Linear` weights as [out, in]; T5X kernels are [in, out], so every kernel is
transposed. The relative position table lives in block 0 of each HF stack as [buckets, heads]
and is one per stack in T5X, [heads, buckets]. HF MT5 attention has no 1/sqrt(d) scaling,
like T5X, so query weights carry over unchanged.

Reading goes tensor by tensor (safetensors `safe_open`, or a memory-mapped torch file), so a
large checkpoint never sits in memory twice.
"""
import json
import os
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np

from xltransfer.checkpoints import staging
from xltransfer.errors import CheckpointError
from xltransfer.model.config import MT5Config

_ATTENTION_PARTS = ("q", "k", "v", "o")
_T5X_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}


def _layer_pairs(config: MT5Config) -> Iterator[Tuple[str, str, bool]]:
  """Yields (hf_name, t5x_name, transpose) for every parameter of `config`."""
  yield "shared.weight", "token_embedder/embedding", False
  for stack, count in (("encoder", config.num_encoder_layers),
                       ("decoder", config.num_decoder_layers)):
    hf_self = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    yield hf_self, f"{stack}/relpos_bias/rel_embedding", True
    for i in range(count):
      hf = f"{stack}.block.{i}.layer"
      ours = f"{stack}/layers_{i}"
      if stack == "encoder":
        attention = [(f"{hf}.0.SelfAttention", f"{ours}/attention",
                      f"{hf}.0.layer_norm", f"{ours}/pre_attention_layer_norm")]
        mlp_index = 1
      else:
        attention = [(f"{hf}.0.SelfAttention", f"{ours}/self_attention",
                      f"{hf}.0.layer_norm", f"{ours}/pre_self_attention_layer_norm"),
                     (f"{hf}.1.EncDecAttention", f"{ours}/encoder_decoder_attention",
                      f"{hf}.1.layer_norm", f"{ours}/pre_cross_attention_layer_norm")]
        mlp_index = 2
      for hf_attn, our_attn, hf_norm, our_norm in attention:
        yield f"{hf_norm}.weight", f"{our_norm}/scale", False
        for part in _ATTENTION_PARTS:
          yield f"{hf_attn}.{part}.weight", f"{our_attn}/{_T5X_ATTENTION[part]}/kernel", True
      yield f"{hf}.{mlp_index}.layer_norm.weight", f"{ours}/pre_mlp_layer_norm/scale", False
      for part in ("wi_0", "wi_1", "wo"):
        yield (f"{hf}.{mlp_index}.DenseReluDense.{part}.weight", f"{ours}/mlp/{part}/kernel", True)
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    yield f"{stack}.final_layer_norm.weight", f"{stack}/{norm}/scale", False
  if not config.logits_via_embedding:
    yield "lm_head.weight", "decoder/logits_dense/kernel", True


# Names HF keeps as aliases of `shared.weight`; they are not separate parameters.
_TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf_config: dict, **overrides) -> MT5Config:
  """An MT5Config from an HF `config.json` dict (T5 v1.1 / mT5 gated-gelu models).

  The output head is taken as untied (mT5's `lm_head`): transformers 5 writes
  `tie_word_embeddings: true` for every MT5 config whatever the model has, so the flag cannot
  be trusted; `state_dict_to_params` checks that the checkpoint really has its own head.
  """
  projection = hf_config.get("feed_forward_proj", "gated-gelu")
  if projection not in ("gated-gelu", "gated-gelu_new"):
    raise CheckpointError(f"feed_forward_proj {projection!r} is not T5 v1.1/mT5 (gated-gelu)")
  fields = dict(
      vocab_size=hf_config["vocab_size"], emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"], head_dim=hf_config["d_kv"], mlp_dim=hf_config["d_ff"],
      num_encoder_layers=hf_config["num_layers"],
      num_decoder_layers=hf_config.get("num_decoder_layers") or hf_config["num_layers"],
      relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
  )
  fields.update(overrides)
  return MT5Config(**fields)


def hf_config_dict(config: MT5Config) -> dict:
  """The HF `config.json` for `config` (an MT5 model with an untied head unless configured)."""
  return {
      "architectures": ["MT5ForConditionalGeneration"],
      "model_type": "mt5",
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": "gated-gelu",
      "tie_word_embeddings": config.logits_via_embedding,
      "is_encoder_decoder": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
  }


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


def _get(tree: dict, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def state_dict_to_params(tensors, config: MT5Config, drop_subtrees: Sequence[str] = ()) -> dict:
  """Maps an HF state dict (name -> array-like, read lazily) to unscanned T5X-named params.

  Every name the config needs must be present with the right shape; all problems are
  reported together so a user can see at once which config field is off. Parameters under
  the top-level `drop_subtrees` (e.g. "decoder" for a dual encoder) are neither read nor
  required.
  """
  from xltransfer.checkpoints.layout import expected_param_shapes, stack_layers

  expected = expected_param_shapes(config.replace(scan_layers=False))
  params, problems = {}, []
  available = set(tensors.keys())
  keeps_head = "decoder" not in drop_subtrees
  if keeps_head and not config.logits_via_embedding and "lm_head.weight" not in available:
    raise CheckpointError("the HF checkpoint has no lm_head.weight: its output layer is tied to "
                          "the embedding, which mT5 never is; xltransfer imports untied mT5 heads")
  used = set(_TIED_ALIASES)
  for hf_name, ours, transpose in _layer_pairs(config):
    used.add(hf_name)
    if ours.split("/")[0] in drop_subtrees:
      continue
    if hf_name not in available:
      problems.append(f"missing {hf_name} (for {ours}, shape {expected[ours]})")
      continue
    array = np.asarray(tensors[hf_name], dtype=np.float32)
    if transpose:
      array = array.T
    if array.shape != expected[ours]:
      problems.append(f"{ours} (from {hf_name}): checkpoint {array.shape} vs model {expected[ours]}")
      continue
    _set(params, ours, np.ascontiguousarray(array))
  unexpected = sorted(available - used)
  if unexpected:
    problems.append("unexpected tensors: " + ", ".join(unexpected))
  if problems:
    raise CheckpointError("HF checkpoint does not fit the model config:\n  " +
                          "\n  ".join(problems))
  return stack_layers(params, config) if config.scan_layers else params


def params_to_state_dict(params: dict, config: MT5Config) -> Dict[str, np.ndarray]:
  """xltransfer params -> HF state dict (float32 numpy), including HF's tied aliases."""
  from xltransfer.checkpoints.layout import unstack_layers

  if config.scan_layers:
    params = unstack_layers(params, config)
  state = {}
  for hf_name, ours, transpose in _layer_pairs(config):
    array = np.asarray(_get(params, ours), dtype=np.float32)
    state[hf_name] = np.ascontiguousarray(array.T if transpose else array)
  for alias in _TIED_ALIASES:
    state[alias] = state["shared.weight"]
  return state


class _LazyTensors:
  """Name -> tensor access over a HF checkpoint directory, one tensor read at a time."""

  def __init__(self, directory: str):
    self.directory = directory
    self._index = {}  # name -> file
    safetensors_index = os.path.join(directory, "model.safetensors.index.json")
    torch_index = os.path.join(directory, "pytorch_model.bin.index.json")
    if os.path.exists(safetensors_index) or os.path.exists(torch_index):
      index_path = safetensors_index if os.path.exists(safetensors_index) else torch_index
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
      self._index = {name: os.path.join(directory, file) for name, file in weight_map.items()}
    else:
      for file in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, file)
        if os.path.exists(path):
          for name in self._names_in(path):
            self._index[name] = path
          break
      else:
        raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin "
                              "(nor a sharded index) in this HF checkpoint directory")
    self._torch_files = {}

  @staticmethod
  def _names_in(path):
    if path.endswith(".safetensors"):
      from safetensors import safe_open
      with safe_open(path, framework="numpy") as f:
        return list(f.keys())
    return list(_load_torch(path).keys())

  def keys(self):
    return self._index.keys()

  def __getitem__(self, name):
    path = self._index[name]
    if path.endswith(".safetensors"):
      from safetensors import safe_open
      with safe_open(path, framework="numpy") as f:
        return f.get_tensor(name)
    if path not in self._torch_files:
      self._torch_files[path] = _load_torch(path)
    return self._torch_files[path][name].float().numpy()


def _load_torch(path):
  import torch
  try:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  except Exception as e:  # torch raises several types for corrupt files.
    raise CheckpointError(f"{path}: not a readable PyTorch state dict ({e})") from e


def load_hf_checkpoint(directory: str, config: MT5Config = None,
                       drop_subtrees: Sequence[str] = ()):
  """Reads a HF MT5 checkpoint directory: returns (params, config).

  Without `config`, it is built from the directory's `config.json` (activation dtype and the
  scan/remat choices stay at their defaults; pass a config to control them). Top-level
  subtrees in `drop_subtrees` are left unread (see `state_dict_to_params`).
  """
  if not os.path.isdir(directory):
    raise CheckpointError(f"{directory}: no such HF checkpoint directory")
  config_path = os.path.join(directory, "config.json")
  if config is None:
    if not os.path.exists(config_path):
      raise CheckpointError(f"{config_path}: missing; pass a model config or add config.json")
    try:
      with open(config_path) as f:
        config = config_from_hf(json.load(f))
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{config_path}: not a valid HF MT5 config ({e})") from e
  try:
    tensors = _LazyTensors(directory)
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"{directory}: unreadable HF checkpoint ({e})") from e
  return state_dict_to_params(tensors, config, drop_subtrees), config


def save_hf_checkpoint(params: dict, config: MT5Config, directory: str, overwrite: bool = False):
  """Writes `config.json` and `model.safetensors` that `from_pretrained` loads.

  An existing non-empty `directory` is refused unless `overwrite`; the files are written to a
  staging directory that replaces `directory` only when complete (see `staging`), so a failure
  never leaves a half-written checkpoint that looks complete.
  """
  from safetensors.numpy import save_file

  state = params_to_state_dict(params, config)
  for alias in _TIED_ALIASES:  # safetensors refuses aliases; HF re-ties them on load.
    state.pop(alias)
  with staging.staged_directory(directory, overwrite) as staged:
    save_file(state, os.path.join(staged, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(staged, "config.json"), "w") as f:
      json.dump(hf_config_dict(config), f, indent=2)
