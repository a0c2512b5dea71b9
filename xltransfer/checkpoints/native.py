"""xltransfer's own parameter checkpoints: an orbax tree plus the model config beside it.

Layout of a directory written by `save_params`:
  config.json   the MT5Config fields, so the checkpoint says which network it belongs to
  params/       an orbax StandardCheckpointer tree with T5X parameter names
Trainer checkpoints (params + optimizer state + step + input position) are managed by
`xltransfer.train.checkpointing`; this format is what `xltransfer convert` writes and what
`INITIAL_CHECKPOINT_PATH` can point at. `restore_tree` reads the parameter tree of either,
optionally leaving out whole subtrees (a dual encoder does not read a seq2seq decoder).
"""
import dataclasses
import json
import os
from typing import Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath

from xltransfer.checkpoints import staging, tree_utils
from xltransfer.errors import CheckpointError
from xltransfer.model.config import MT5Config

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def is_native_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(
      os.path.join(path, PARAMS_DIR))


def read_config(path: str) -> MT5Config:
  config_path = os.path.join(path, CONFIG_FILE)
  try:
    with open(config_path) as f:
      fields = json.load(f)
  except FileNotFoundError as e:
    raise CheckpointError(f"{config_path}: missing (not an xltransfer checkpoint)") from e
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
  known = {f.name for f in dataclasses.fields(MT5Config)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise CheckpointError(f"{config_path}: unknown config keys {unknown}")
  return MT5Config(**fields)


def save_params(params, config: MT5Config, path: str, overwrite: bool = False):
  """Writes params and config; the destination appears only once both are complete.

  An existing non-empty `path` is refused unless `overwrite` (see `staging`).
  """
  with staging.staged_directory(path, overwrite) as staged:
    with open(os.path.join(staged, CONFIG_FILE), "w") as f:
      json.dump(dataclasses.asdict(config), f, indent=2)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(staged, PARAMS_DIR), params)
    checkpointer.wait_until_finished()


def _key_name(key) -> str:
  for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def stored_shapes(directory: str):
  """Flat name ('encoder/layers_0/mlp/wo/kernel', '0/v/...' in lists) -> shape of every array
  of the orbax tree in `directory` (an item directory; nothing but its metadata is read)."""
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(directory))
  except Exception as e:  # orbax raises several types for a missing or damaged tree.
    raise CheckpointError(f"{directory}: cannot read the parameter tree's metadata ({e})") from e
  tree = getattr(metadata, "tree", metadata)
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def restore_tree(directory: str, target, drop_subtrees: Sequence[str] = ()):
  """Restores the orbax parameter tree in `directory` into `target` (`jax.ShapeDtypeStruct`s,
  optionally with shardings), each array straight into its sharding.

  Top-level subtrees of the checkpoint named in `drop_subtrees` and absent from `target` are
  not read. Any other difference of names or shapes is a CheckpointError naming them.
  """
  stored = stored_shapes(directory)
  wanted = {name: tuple(leaf.shape) for name, leaf in tree_utils.flatten_tree(target).items()}
  dropped = [n for n in stored if n not in wanted and n.split("/")[0] in drop_subtrees]
  unexpected = sorted(set(stored) - set(wanted) - set(dropped))
  missing = sorted(set(wanted) - set(stored))
  wrong = sorted(n for n in set(stored) & set(wanted) if stored[n] != wanted[n])
  if missing or unexpected or wrong:
    problems = [f"shape mismatch {n}: checkpoint {stored[n]} vs model {wanted[n]}"
                for n in wrong[:5]]
    if missing:
      problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
      absent = sorted({n.split("/")[0] for n in missing} - {n.split("/")[0] for n in stored})
      if absent == ["decoder"]:
        problems.append("the checkpoint has no decoder: it is a dual encoder's (token embedding "
                        "and encoder only); load it with models/dual_encoder.gin after the model "
                        "file")
    if unexpected:
      problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    raise CheckpointError(f"{directory}: parameters do not fit the model config: "
                          + "; ".join(problems))
  try:
    if not dropped:
      return ocp.StandardCheckpointer().restore(directory, target)
    # A partial restore reads only the target's arrays.
    return ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  except Exception as e:  # orbax raises several types for arrays it cannot read.
    raise CheckpointError(f"{directory}: parameters do not fit the model config "
                          f"({type(e).__name__}: {e})") from e


def load_params(path: str, target=None, shardings=None, drop_subtrees: Sequence[str] = ()):
  """Restores params (as jax arrays) into `target`'s shapes/dtypes and optional shardings.

  Each array is read straight into its sharding, so a sharded restore never materialises a
  full host copy of the model; `drop_subtrees` as for `restore_tree`. Returns (params, config).
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such checkpoint directory")
  config = read_config(path)
  if target is None:
    from xltransfer.model.models import EncoderDecoderModel
    target = EncoderDecoderModel(config).abstract_params()
  if shardings is not None:
    target = jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        target, shardings)
  return restore_tree(os.path.join(path, PARAMS_DIR), target, drop_subtrees), config
