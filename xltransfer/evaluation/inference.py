"""Batched inference at fixed shapes: decoding, target scoring and rank classification.

Every batch has the same shape ([batch_size, length]); the last one is padded with all-zero
rows that are dropped from the results, so each jitted function compiles once per task
shape. With a partitioner the batch is sharded over the mesh's data axes and the parameters
follow the model's logical axis rules, as in training; results come back replicated so every
host can read them.

    runner = Inference(model, params, batch_size=32, partitioner=partitioner)
    tokens = runner.decode(encoder_input_tokens, max_decode_length=64)        # greedy
    tokens = runner.decode(encoder_input_tokens, 64, beam_size=4, alpha=0.6)  # beam search
    best, scores = runner.rank_classify(encoder_input_tokens, choice_tokens, target_length=32)
"""
import contextlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from xltransfer.errors import ConfigError
from xltransfer.model import layers
from xltransfer.model.models import EOS_ID


def pad_columns(sequences: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """Token lists -> int32 [n, length], cut at `length` and zero-padded."""
  out = np.zeros((len(sequences), length), np.int32)
  for i, tokens in enumerate(sequences):
    tokens = list(tokens)[:length]
    out[i, :len(tokens)] = tokens
  return out


def encode_with_eos(vocabulary, texts: Sequence[str], length: int) -> np.ndarray:
  """Texts tokenized as seqio's tokenize + append_eos_after_trim do: [n, length] int32."""
  rows = [list(vocabulary.encode(text))[:length - 1] + [EOS_ID] for text in texts]
  return pad_columns(rows, length)


def shift_right(targets: np.ndarray) -> np.ndarray:
  """Decoder inputs for teacher forcing: the targets shifted right, starting from 0."""
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def data_parallel_size(partitioner) -> int:
  """How many ways the batch axis is split on the partitioner's mesh."""
  return partitioner.data_parallel_size()


def _to_host(array) -> np.ndarray:
  """A replicated result as numpy; across hosts, this process's copy."""
  if getattr(array, "is_fully_addressable", True):
    return np.asarray(array)
  return np.asarray(array.addressable_data(0))


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  if array.shape[0] == rows:
    return array
  padding = np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)
  return np.concatenate([array, padding])


class Inference:
  """Runs jitted model functions over host arrays in fixed-size, optionally sharded batches.

  Args:
    model: an `EncoderDecoderModel` (or a subclass such as the dual encoder).
    params: the parameter tree; placed on the mesh here when a partitioner or mesh is given.
    batch_size: global rows per call; a multiple of the data-parallel mesh size.
    partitioner: an `xltransfer.partitioning.Partitioner`; or give `mesh` to use the default
      (1D) logical rules on that mesh. Neither: run on the default device.
    show_progress: a tqdm bar over the batches of each call.
  """

  def __init__(self, model, params, batch_size: int, partitioner=None,
               mesh: Optional[Mesh] = None, show_progress: bool = True):
    if batch_size < 1:
      raise ConfigError(f"inference batch_size must be positive, got {batch_size}")
    if partitioner is None and mesh is not None:
      from xltransfer import partitioning  # pylint: disable=import-outside-toplevel
      partitioner = partitioning.Partitioner(mesh, partitioning.standard_logical_axis_rules())
    self.model = model
    self.batch_size = batch_size
    self.partitioner = partitioner
    self.show_progress = show_progress
    self._compiled: Dict[str, Callable] = {}
    if partitioner is not None:
      data_shards = data_parallel_size(partitioner)
      if batch_size % data_shards:
        raise ConfigError(f"inference batch_size {batch_size} is not a multiple of the "
                          f"{data_shards} data-parallel shards of the mesh")
      shardings = partitioner.shardings(model.param_logical_axes())
      params = jax.tree.map(jax.device_put, params, shardings)
    self.params = params
    self._decoding_weights = None

  # ---- the batching machinery ----

  def _context(self):
    if self.partitioner is None:
      return contextlib.nullcontext()
    return self.partitioner.activation_context()

  def _put(self, array: np.ndarray):
    if self.partitioner is None:
      return jnp.asarray(array)
    sharding = self.partitioner.batch_sharding(array.ndim)
    # Every host holds the whole batch (evaluation reads the full split on each host).
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  def _jit(self, name: str, fn: Callable) -> Callable:
    """`fn(params, *batch_arrays)` jitted once per name, with replicated outputs."""
    if name not in self._compiled:
      out_shardings = None if self.partitioner is None else self.partitioner.replicated()
      self._compiled[name] = jax.jit(fn, out_shardings=out_shardings)
    return self._compiled[name]

  def map_batches(self, name: str, fn: Callable, arrays: Sequence[np.ndarray],
                  description: str = "", params=None) -> List[np.ndarray]:
    """Applies `fn(params, *arrays_batch) -> array or tuple` over fixed-size batches.

    All arrays share their leading dimension n; returns the outputs concatenated, n rows each.
    `params` (default: the engine's) is what `fn` receives as its first argument.
    """
    params = self.params if params is None else params
    arrays = [np.asarray(a) for a in arrays]
    total = arrays[0].shape[0]
    if any(a.shape[0] != total for a in arrays):
      raise ValueError(f"arrays of different lengths: {[a.shape for a in arrays]}")
    compiled = self._jit(name, fn)
    outputs: List[List[np.ndarray]] = []
    starts = range(0, total, self.batch_size)
    bar = tqdm.tqdm(starts, desc=description or name, unit="batch", leave=False,
                    disable=not self.show_progress or len(starts) < 2)
    with self._context():
      for start in bar:
        rows = min(self.batch_size, total - start)
        batch = [self._put(_pad_rows(a[start:start + rows], self.batch_size)) for a in arrays]
        result = compiled(params, *batch)
        result = result if isinstance(result, tuple) else (result,)
        outputs.append([_to_host(r)[:rows] for r in result])
    if not outputs:
      return []
    return [np.concatenate(parts) for parts in zip(*outputs)]

  def _params_for_decoding(self):
    """What the decoding functions take as params. On a CPU: the model's decoding weights,
    made once for every batch and task (the bf16 cast and the output kernel's transposition
    would otherwise run on each batch; see `decoding.DecodingWeights`). Elsewhere the params:
    XLA:TPU/GPU fuse the cast into the steps, and a held copy would take accelerator memory."""
    with self._context():
      if layers.target_platform() != "cpu":
        return self.params
      if self._decoding_weights is None:
        self._decoding_weights = self.model.decoding_weights(self.params)
    return self._decoding_weights

  # ---- what the evaluator runs ----

  def decode(self, encoder_input_tokens: np.ndarray, max_decode_length: int, beam_size: int = 1,
             alpha: float = 0.6, description: str = "decode") -> np.ndarray:
    """Output tokens [n, max_decode_length] (0 after EOS): greedy, or the best beam."""
    model = self.model
    if beam_size <= 1:
      fn = lambda params, tokens: model.greedy_decode(params, tokens, max_decode_length)
      name = f"greedy_{max_decode_length}"
    else:
      def fn(params, tokens):
        sequences, _ = model.beam_search(params, tokens, max_decode_length, beam_size, alpha)
        return sequences[:, 0]
      name = f"beam_{max_decode_length}_{beam_size}_{alpha}"
    if len(encoder_input_tokens) == 0:
      return np.zeros((0, max_decode_length), np.int32)
    return self.map_batches(name, fn, [encoder_input_tokens], description,
                            params=self._params_for_decoding())[0]

  def score(self, encoder_input_tokens: np.ndarray, decoder_target_tokens: np.ndarray,
            description: str = "score") -> np.ndarray:
    """Sum of target log-probabilities per row: [n] float32."""
    model = self.model

    def fn(params, inputs, targets):
      batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
               "decoder_input_tokens": jnp.concatenate(
                   [jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)}
      return model.score_targets(params, batch)
    if len(encoder_input_tokens) == 0:
      return np.zeros((0,), np.float32)
    return self.map_batches("score", fn, [encoder_input_tokens, decoder_target_tokens],
                            description)[0]

  def rank_classify(self, encoder_input_tokens: np.ndarray,
                    choice_tokens: Sequence[np.ndarray],
                    description: str = "rank") -> Tuple[np.ndarray, List[np.ndarray]]:
    """Scores every choice of every example as its target; the best one wins.

    Args:
      encoder_input_tokens: [n, inputs_length].
      choice_tokens: per example, its choices as [num_choices, target_length] tokens (EOS
        included); examples may have different numbers of choices.
    Returns:
      (index of the best choice per example [n] (ties: the earlier choice), per example the
      log-likelihood of each choice).
    """
    counts = [len(c) for c in choice_tokens]
    if any(c == 0 for c in counts):
      raise ValueError("an example has no choices to rank")
    if not counts:
      return np.zeros((0,), np.int64), []
    inputs = np.repeat(np.asarray(encoder_input_tokens), counts, axis=0)
    targets = np.concatenate([np.asarray(c) for c in choice_tokens])
    flat = self.score(inputs, targets, description)
    bounds = np.cumsum([0] + counts)
    scores = [flat[bounds[i]:bounds[i + 1]] for i in range(len(counts))]
    return np.asarray([int(np.argmax(s)) for s in scores], np.int64), scores
