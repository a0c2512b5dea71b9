"""A row-sparse gradient for the token embedding: differentiate with respect to the rows that a
batch looks up, not the whole table.

A batch of mT5-small (8 x 512 inputs, 8 x 128 targets) looks up at most 5,120 of the
embedding's 250,112 rows; the table's gradient is zero in every other row. Differentiated with
respect to the whole table, a train step writes that 512 MB gradient (zeros plus a scatter of
the used rows), and Adafactor's statistics, its update and the gradient norm each read it and
the table back: about 90 ms of a 2.7 s CPU step. Here the loss sees the table's looked-up rows
as an array of their own (`LookedUpRows.trainable`, read by `layers.Embed` through
`take_looked_up_rows`), its gradient is those rows' gradient, and the optimizer updates those
rows in place (`apply_updates`). The update is T5X's dense Adafactor update: a row with zero
gradient gets a zero update and only its second-moment statistic changes (decays), which the
optimizer does over the [vocab] statistic vector (`optimizer.scale_by_factored_rms`).
"""
import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from xltransfer.model.layers import LOOKED_UP_IDS, LOOKED_UP_ROWS


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _replace(tree, path, value):
  """A copy of the nested dict `tree` with `tree[path]` replaced by `value`, sharing every
  other subtree."""
  if not path:
    return value
  key = path[0]
  return {**tree, key: _replace(tree[key], path[1:], value)}


@dataclasses.dataclass(frozen=True)
class LookedUpRows:
  """The distinct token ids of a batch for the table at `path` (a tuple of keys to the table
  in the params tree).

  `ids` [n] is sorted and padded with the vocabulary size up to n = the number of token
  positions in the batch's `token_id_features`: a fixed shape, and pad entries that every
  update drops (they are out of the table's range) and no token reads.
  """
  path: Tuple[str, ...]
  ids: jax.Array

  @classmethod
  def collect(cls, path, params, batch, features) -> "LookedUpRows":
    vocab_size = _get(params, path).shape[0]
    tokens = jnp.concatenate([batch[name].reshape(-1) for name in features])
    ids = jnp.unique(tokens, size=tokens.shape[0], fill_value=vocab_size)
    return cls(tuple(path), ids)

  def trainable(self, params):
    """`params` with the table replaced by its looked-up rows [n, embed]: what the step
    differentiates. Pad ids read a row of NaN (out of range, as the lookup itself gives), read
    by no token."""
    return _replace(params, self.path, jnp.take(_get(params, self.path), self.ids, axis=0))

  def loss_params(self, trainable, params):
    """What the model's loss takes: `trainable` with the table back in place (not
    differentiated: the loss does not read it) and the ids and rows beside it, where
    `layers.Embed` looks tokens up."""
    scope = self.path[:-1]
    rows = _get(trainable, self.path)
    table = _get(params, self.path)
    return _replace(trainable, scope, {**_get(trainable, scope), self.path[-1]: table,
                                       LOOKED_UP_IDS: self.ids, LOOKED_UP_ROWS: rows})

  def loss_fn(self, model_loss_fn: Callable, params) -> Callable:
    """`model_loss_fn` as a function of the trainable tree (same other arguments)."""
    def loss_of_trainable(trainable, *args):
      return model_loss_fn(self.loss_params(trainable, params), *args)
    return loss_of_trainable

  def row_ids(self, params):
    """The tree of params' structure that the optimizer's `row_ids` argument takes: these ids
    at the table, None elsewhere."""
    return _replace(jax.tree.map(lambda _: None, params), self.path, self.ids)


def apply_updates(params, updates, row_ids: Optional[Any] = None):
  """`optax.apply_updates`, except that where `row_ids` has ids the update holds those rows
  only and is added to them (pad ids, out of range, are dropped)."""
  if row_ids is None:
    return optax.apply_updates(params, updates)
  treedef = jax.tree.structure(params)
  flat = [treedef.flatten_up_to(t) for t in (params, updates, row_ids)]

  def one(p, u, ids):
    if ids is None:
      return (p + u).astype(p.dtype)
    return p.at[ids].add(u.astype(p.dtype), mode="drop")
  return jax.tree.unflatten(treedef, [one(*args) for args in zip(*flat)])
