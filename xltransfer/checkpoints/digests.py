"""Digests of a trainer checkpoint's arrays: written with each checkpoint, checked on restore.

orbax writes arrays as zstd-compressed zarr chunks in an OCDBT database, and nothing checksums
the chunk data (zstd frames are written without their content checksum; with zarr3,
tensorstore's crc32c covers only the shard index), so a flipped byte in a data file mostly
restores silently as wrong values (sometimes zstd fails to decode it; that is reported too).
Every array of the train state therefore gets a 64-bit digest of its exact bits.

The digest is computed where the arrays already are, on their devices, by one jitted program
of integer reductions (a few integer operations per element, fused by XLA into one pass per
array and lane; two uint32 per array come back to the host). orbax offers no hook on the
bytes it transfers or writes, and hashing host copies would add a second device-to-host
transfer of the state. An asynchronous save dispatches the program when orbax's `save`
returns (after its copy of the arrays to the host and the rest of its blocking work), so the
training loop waits only for the dispatch (4 ms for mT5-small's 763 arrays; dispatched
before, the digests competed with that work for the cores: blocked 0.61 s instead of 0.18 s
on a 2-core CPU), and awaits it in orbax's background commit (`DigestsHandler`); a
synchronous save dispatches it first. On an
accelerator the reductions read the state once at memory bandwidth (not measured here: no
accelerator was available). On a CPU, XLA rewrites an integer reduction over more than 32
elements into reduce-windows that it does not vectorise (2.4 GB/s for this digest on an idle
2-core machine), so large arrays are summed in rows of 32 (`_array_digest_in_rows`, the same
sums: 9-11 GB/s); mT5-small's 1.2 GB state then takes 0.07-0.12 s instead of 0.45 s (0.22 s
instead of 0.9 s under load). About half of that is reading the data (a plain sum of the
bits takes 0.05 s), so a cheaper hash would gain little: the algorithm is unchanged and
checkpoints written before verify as they did. benchmarks/checkpoint_digest.py measures the
cost on a save: below the noise of a shared 2-core machine (7 saves of each kind: blocked
in `save()` median 0.186 s with digests vs 0.191 s without, complete 1.94 s vs 2.57 s, single
saves of one kind spreading over 1.4-4.3 s; the digests alone 0.076 s).

Integer addition modulo 2**32 is associative and commutative, so the digest does not depend
on the mesh, the sharding or the platform: a checkpoint saved on a TPU pod verifies when
restored on one CPU. Element i with bits b contributes h = fmix32(b ^ i * golden ratio) to
the first lane and fmix32(h ^ seed) to the second (fmix32 is MurmurHash3's finaliser, a
bijection), so a change to any single element always changes the digest; a wider change
(values moved between positions, many bytes) goes undetected with probability about 2**-64.

Multi-host: the reduction runs over the global arrays, so every host feeds in the shards it
wrote (or restored) and every host obtains the same digests; a damaged shard read by any host
fails verification on all hosts together, and they stop (or fall back) in step. (Each device
sums the replicas it holds of a replicated array, on the CPU in rows of 32: the replicas are
read from the same files, so they hold the same bytes.)
"""
import dataclasses
import functools
import threading
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

ALGORITHM = "xltransfer-fmix32x2-v1"
FORMAT_VERSION = 1

_GOLDEN = np.uint32(0x9E3779B9)
_SECOND_LANE_SEED = np.uint32(0x85EBCA6B)


def leaf_names(tree) -> List[str]:
  """'encoder/layers_0/attention/key/kernel' (optimizer state: '0/v_row/...') for each leaf,
  in jax's flattening order."""
  names = []
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    parts = []
    for key in path:
      for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
          parts.append(str(getattr(key, attribute)))
          break
      else:
        parts.append(str(key))
    names.append("/".join(parts))
  return names


def _fmix32(h):
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _element_bits(x) -> jax.Array:
  """The bits of each element as uint32 (narrower types widened, 64-bit types folded)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    narrow = jnp.uint8 if size == 1 else jnp.uint16
    return lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)
  if size == 8:
    words = lax.bitcast_convert_type(x, jnp.uint32)  # shape + (2,)
    return words[..., 0] ^ _fmix32(words[..., 1] + _SECOND_LANE_SEED)
  raise TypeError(f"no digest for arrays of dtype {x.dtype}")


def _lanes(bits, position):
  """The two per-element hashes (uint32) of elements with bits `bits` at flat positions
  `position` (row-major, modulo 2**32)."""
  first = _fmix32(bits ^ (position * _GOLDEN))
  return first, _fmix32(first ^ _SECOND_LANE_SEED)


def _array_digest(x) -> jax.Array:
  """uint32[2]: the two lanes of one array's digest, as a reduction over its global shape
  (any sharding: the partitioner splits it into per-shard sums and a collective)."""
  bits = _element_bits(x)
  position = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(bits.ndim)):
    position = position + lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * np.uint32(
        stride % 2**32)
    stride *= bits.shape[dim]
  first, second = _lanes(bits, position)
  return jnp.stack([jnp.sum(first, dtype=jnp.uint32), jnp.sum(second, dtype=jnp.uint32)])


# XLA:CPU vectorises an integer reduction of up to 32 elements, not a longer one (see the
# module docstring): on the CPU large arrays are summed in rows of 32, the row sums again in
# rows of 32, and so on; the same sum modulo 2**32.
_ROW = 32


def _sum_in_rows(values) -> jax.Array:
  """The uint32 sum of `values` (shape [n, _ROW]), row by row."""
  sums = jnp.sum(values, axis=1, dtype=jnp.uint32)
  while sums.size > _ROW:
    # Else XLA merges the stages back into one long reduction (2.4 GB/s again).
    sums = lax.optimization_barrier(sums)
    sums = jnp.pad(sums, (0, -sums.size % _ROW))  # zeros add nothing
    sums = jnp.sum(sums.reshape(-1, _ROW), axis=1, dtype=jnp.uint32)
  return jnp.sum(sums, dtype=jnp.uint32)


def _array_digest_in_rows(x) -> jax.Array:
  """`_array_digest(x)` for an array held whole by each of its devices (a reshape to rows
  would redistribute a sharded one)."""
  bits = _element_bits(x).reshape(-1)
  whole = bits.size // _ROW * _ROW
  digest = jnp.zeros(2, jnp.uint32)
  if whole:
    rows = bits[:whole].reshape(-1, _ROW)
    position = (lax.broadcasted_iota(jnp.uint32, rows.shape, 0) * np.uint32(_ROW)
                + lax.broadcasted_iota(jnp.uint32, rows.shape, 1))
    digest = digest + jnp.stack([_sum_in_rows(lane) for lane in _lanes(rows, position)])
  if bits.size > whole:
    rest = bits[whole:]
    position = lax.iota(jnp.uint32, rest.size) + np.uint32(whole % 2**32)
    digest = digest + jnp.stack([jnp.sum(lane, dtype=jnp.uint32)
                                 for lane in _lanes(rest, position)])
  return digest


# Smaller arrays (most of a train state's, e.g. layer norm scales) are digested as one
# reduction: a program with fewer operations compiles faster, and they hold little data.
_MIN_SIZE_IN_ROWS = 2**14


def _in_rows(leaf) -> bool:
  """Whether `leaf` is digested by `_array_digest_in_rows`: a large array, on the CPU, held
  whole by each of its devices (elsewhere the whole-array reduction is fast, and on a TPU a
  reshape to rows of 32 would be a relayout copy)."""
  if np.size(leaf) < _MIN_SIZE_IN_ROWS:
    return False
  sharding = getattr(leaf, "sharding", None)
  if not isinstance(sharding, jax.sharding.Sharding):  # numpy: placed on the default device
    return jax.default_backend() == "cpu"
  return (sharding.is_fully_replicated
          and all(device.platform == "cpu" for device in sharding.device_set))


@functools.partial(jax.jit, static_argnums=1)
def _digests_on_device(leaves, in_rows: Tuple[bool, ...]):
  """uint32[len(leaves), 2]. One program for the whole state: over several processes each
  array's reduction is a collective, and one program keeps every process running them in
  the same order (with a program per array, processes deadlocked). `in_rows` (static, the
  same on every process: it depends on the shardings only) chooses `_array_digest_in_rows`
  per leaf. Compiled once per run (seconds for mT5-small's 763 arrays on a CPU)."""
  if not leaves:
    return jnp.zeros((0, 2), jnp.uint32)
  return jnp.stack([_array_digest_in_rows(x) if rows else _array_digest(x)
                    for x, rows in zip(leaves, in_rows)])


class PendingDigests:
  """The digest record of a checkpoint's array items, computed on the devices once
  `dispatch()`ed; `result()` (from any thread) waits for it and returns the JSON record
  written with the checkpoint: {"format", "algorithm", "items": {item: {array name:
  {"digest": 16 hex digits, "shape": [...], "dtype": "float32"}}}}."""

  def __init__(self, items: Dict[str, Any], dispatch: bool = True):
    self._entries = []  # (item, name, shape, dtype), in the order of the device result
    self._leaves = []
    for item, tree in items.items():
      for name, leaf in zip(leaf_names(tree), jax.tree.leaves(tree)):
        self._entries.append((item, name, [int(n) for n in np.shape(leaf)],
                              str(np.dtype(leaf.dtype))))
        self._leaves.append(leaf)
    self._items = list(items)
    self._lock = threading.Lock()
    self._dispatched = threading.Event()
    self._device_result = None
    self._failure = None
    self._record = None
    if dispatch:
      self.dispatch()

  def dispatch(self):
    """Starts the computation, asynchronously like any jax computation. Call it from the
    thread that owns the arrays while they are current (a train step that later donates them
    waits for these reads); a second call does nothing."""
    with self._lock:
      if self._dispatched.is_set():
        return
      try:
        self._device_result = _digests_on_device(
            self._leaves, tuple(_in_rows(x) for x in self._leaves))
      except BaseException as e:
        self._failure = e
        raise
      finally:
        self._leaves = None  # the arrays are not kept alive for the record
        self._dispatched.set()

  def cancel(self, reason: str):
    """Never dispatches the computation (the save failed): `result()` raises instead of
    waiting for it."""
    with self._lock:
      if not self._dispatched.is_set():
        self._failure = RuntimeError(reason)
        self._leaves = None
        self._dispatched.set()

  def result(self) -> Dict[str, Any]:
    """The record; waits for `dispatch()` (from another thread) and the computation."""
    self._dispatched.wait()
    if self._failure is not None:
      raise RuntimeError(f"the array digests could not be computed: {self._failure}")
    if self._record is None:
      values = _to_host(self._device_result)
      items = {item: {} for item in self._items}
      for (item, name, shape, dtype), lanes in zip(self._entries, values):
        items[item][name] = {"digest": f"{int(lanes[0]):08x}{int(lanes[1]):08x}",
                             "shape": shape, "dtype": dtype}
      self._record = {"format": FORMAT_VERSION, "algorithm": ALGORITHM, "items": items}
      self._device_result = None
    return self._record


def _to_host(array) -> np.ndarray:
  """The digests on this host: every process holds the full (replicated) result."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    return np.asarray(array.addressable_data(0))
  return np.asarray(jax.device_get(array))


def start(items: Dict[str, Any], dispatch: bool = True) -> PendingDigests:
  """The digests of every array of `items` ({item name: pytree}), computing from now on, or
  from `PendingDigests.dispatch()` when not `dispatch`."""
  return PendingDigests(items, dispatch)


def compute(items: Dict[str, Any]) -> Dict[str, Any]:
  """The digest record of `items`, computed now."""
  return PendingDigests(items).result()


def compare(stored: Dict[str, Any], computed: Dict[str, Any]) -> List[Tuple[str, str, str]]:
  """[(item, array name, what differs)] between a stored digest record and one computed from
  the restored arrays; empty when every array verifies."""
  if stored.get("algorithm") != ALGORITHM:
    return [("*", "*", f"its digests were made with {stored.get('algorithm')!r}, which this "
                       f"version of xltransfer cannot check (it computes {ALGORITHM!r})")]
  problems = []
  for item, restored in computed["items"].items():
    expected = stored.get("items", {}).get(item)
    if expected is None:
      problems.append((item, "*", "the digest record has no entry for this item"))
      continue
    for name, entry in restored.items():
      want = expected.get(name)
      if want is None:
        problems.append((item, name, "not in the digest record"))
      elif want.get("digest") != entry["digest"]:
        problems.append((item, name, f"digest {entry['digest']} of the restored values, "
                                     f"{want.get('digest')} when saved (shape {entry['shape']}, "
                                     f"{entry['dtype']})"))
    for name in sorted(set(expected) - set(restored)):
      problems.append((item, name, "in the digest record but not restored"))
  return problems


# ---- the orbax item that carries the record ----

class DigestsHandler(ocp.JsonCheckpointHandler):
  """orbax's JSON item, except that the record is awaited in the background commit (so an
  asynchronous save does not wait for the digests) and still written before orbax finalises
  the checkpoint: a checkpoint is complete only with its digests."""

  async def _save_fn(self, x, directory):
    if isinstance(x, PendingDigests):
      x = x.result()
    await super()._save_fn(x, directory)


@ocp.args.register_with_handler(DigestsHandler, for_save=True)
@dataclasses.dataclass
class DigestsSave(ocp.args.CheckpointArgs):
  item: Any  # a PendingDigests, or a finished record


@ocp.args.register_with_handler(DigestsHandler, for_restore=True)
@dataclasses.dataclass
class DigestsRestore(ocp.args.CheckpointArgs):
  """orbax requires one; `CheckpointManager.restore` reads the small record directly."""
  item: Optional[bytes] = None
