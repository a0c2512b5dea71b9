"""Device meshes, logical-axis rules and the shardings derived from them.

One gin config runs unchanged on a laptop CPU, a GPU node and a TPU pod: the mesh is built from
the devices present (`data`, `model` and optionally `fsdp` axes) and every parameter, optimizer
state leaf and batch gets its sharding from logical axis names through rules, as in T5X.
"""
import dataclasses
import logging
import math
import os
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xltransfer.errors import ConfigError

DATA, MODEL, FSDP = "data", "model", "fsdp"

# Logical names that are never partitioned by the presets.
_REPLICATED_LOGICAL_AXES = (
    ("relpos_buckets", None), ("abspos_buckets", None), ("length", None), ("layers", None),
    ("stack", None), ("mlp_activations", None), ("kv", None))


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1):
  """T5X's standard presets: 1D shards weights over `model` only, 2D also over `data`.

  With 2D parameter partitioning `embed` is sharded over `data` (ZeRO-3 style: the data axis
  also splits the weights); with 2D activation partitioning activations' `embed` goes over
  `model`. Flax uses the first rule whose mesh axis is still free, so `batch` keeps `data`
  for activations while parameters (which have no batch axis) use it for `embed`.
  """
  if activation_partitioning_dims not in (1, 2) or parameter_partitioning_dims not in (1, 2):
    raise ConfigError("activation_partitioning_dims and parameter_partitioning_dims must be 1 "
                      f"or 2, got {activation_partitioning_dims} and "
                      f"{parameter_partitioning_dims}")
  rules = [("batch", DATA), ("vocab", MODEL), ("mlp", MODEL), ("heads", MODEL),
           ("joined_kv", MODEL)]
  if activation_partitioning_dims == 2:
    rules.append(("embed", MODEL))
  if parameter_partitioning_dims == 2:
    rules.append(("embed", DATA))
  if activation_partitioning_dims == 1 and parameter_partitioning_dims == 1:
    rules.append(("embed", None))
  return tuple(rules) + _REPLICATED_LOGICAL_AXES


def fsdp_logical_axis_rules():
  """Rules for a mesh with an `fsdp` axis: batch over data×fsdp, weights' embed over fsdp."""
  return ((("batch", (DATA, FSDP)), ("embed", FSDP), ("vocab", MODEL), ("mlp", MODEL),
           ("heads", MODEL), ("joined_kv", MODEL)) + _REPLICATED_LOGICAL_AXES)


@gin.configurable(module="xltransfer.partitioning")
def logical_axis_rules(preset: str = "1d", overrides: Sequence[Sequence[Any]] = ()):
  """The rules a run uses: a preset (`1d`, `2d`, `2d_activations`, `fsdp`) plus overrides.

  Overrides come first so that they win: `(("embed", "model"),)` shards embed over `model`.
  """
  presets = {
      "1d": lambda: standard_logical_axis_rules(1, 1),
      "2d": lambda: standard_logical_axis_rules(1, 2),
      "2d_activations": lambda: standard_logical_axis_rules(2, 2),
      "fsdp": fsdp_logical_axis_rules,
  }
  if preset not in presets:
    raise ConfigError(f"unknown logical_axis_rules.preset {preset!r}; valid: {sorted(presets)}")
  user = []
  for rule in overrides:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f"logical_axis_rules.overrides entry {rule!r} is not (logical_name, "
                        "mesh_axis_or_None)")
    user.append((rule[0], tuple(rule[1]) if isinstance(rule[1], list) else rule[1]))
  return tuple(user) + presets[preset]()


@gin.configurable(module="xltransfer.partitioning")
def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None,
                           cpu_collectives: str = "gloo", preemption_sync: bool = True):
  """Joins a multi-host run through `jax.distributed` (no-op for a single process).

  The coordinator comes from the arguments, else from XLTRANSFER_COORDINATOR_ADDRESS,
  XLTRANSFER_NUM_PROCESSES and XLTRANSFER_PROCESS_ID; on Cloud TPU VMs (TPU_WORKER_HOSTNAMES
  with more than one host) jax finds everything by itself. Must run before any jax
  computation. jax's preemption service (on by default) takes SIGTERM over so that the training
  loop can stop every host at the same step; a job that does not check it (evaluation) passes
  `preemption_sync=False`, so that SIGTERM stops it as usual.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("XLTRANSFER_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("XLTRANSFER_NUM_PROCESSES"):
    num_processes = int(env["XLTRANSFER_NUM_PROCESSES"])
  if process_id is None and env.get("XLTRANSFER_PROCESS_ID"):
    process_id = int(env["XLTRANSFER_PROCESS_ID"])
  on_tpu_pod = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  if coordinator_address is None and not on_tpu_pod:
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ConfigError("a multi-host run needs the coordinator address, the number of processes "
                      "and this process's id (flags --coordinator_address/--num_processes/"
                      "--process_id or XLTRANSFER_* environment variables)")
  # CPU hosts exchange collectives over gloo; without it cross-process CPU computations fail.
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if not preemption_sync:  # else jax's own default ($JAX_ENABLE_PREEMPTION_SERVICE) stands
    jax.config.update("jax_enable_preemption_service", False)
  kwargs = {}
  if local_device_ids is not None:
    kwargs["local_device_ids"] = list(local_device_ids)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, **kwargs)
  logging.info("joined a %d-process run as process %d", jax.process_count(), jax.process_index())
  return True


def _resolve_axis_sizes(num_devices: int, sizes: dict):
  """Fills the one axis given as -1 so that the product is the number of devices."""
  unknown = [name for name, size in sizes.items() if size == -1]
  bad = {name: size for name, size in sizes.items()
         if not isinstance(size, (int, np.integer)) or isinstance(size, bool)
         or (size < 1 and size != -1)}
  if bad:
    raise ConfigError(f"mesh axis sizes must be positive integers or -1 (the rest of the "
                      f"devices); xltransfer.partitioning.create_mesh got {bad}")
  if len(unknown) > 1:
    raise ConfigError(f"at most one mesh axis may be -1, got {unknown}")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if unknown:
    if num_devices % known:
      raise ConfigError(f"{num_devices} devices cannot be split into mesh axes {sizes}")
    sizes = dict(sizes, **{unknown[0]: num_devices // known})
  if int(np.prod(list(sizes.values()))) != num_devices:
    raise ConfigError(f"mesh axes {sizes} need {int(np.prod(list(sizes.values())))} devices, "
                      f"but {num_devices} are present")
  return sizes


def _torus_shape(devices):
  """The physical TPU torus (x, y, z) the devices span, or None if they carry no coords."""
  try:
    coords = np.asarray([d.coords for d in devices])
  except (AttributeError, TypeError):
    return None
  shape = [int(c) for c in coords.max(axis=0) - coords.min(axis=0) + 1]
  while len(shape) > 2 and shape[-1] == 1:  # v5e and v6e tori are 2D; their z is always 0.
    shape.pop()
  return tuple(shape)


def _axis_sizes_that_fit(torus):
  """Every product of a subset of the torus's axis sizes: the mesh axis sizes it can take."""
  sizes = {1}
  for n in torus:
    sizes |= {s * n for s in sizes}
  return sorted(sizes)


def _torus_mismatch_message(names, shape, devices, detail: str) -> str:
  # mesh_utils names the axis it could not place by index ("logical_axis_index 1").
  match = re.search(r"logical_axis_index (\d+)", detail)
  axis = names[int(match.group(1))] if match and int(match.group(1)) < len(names) else MODEL
  torus = _torus_shape(devices)
  where = (f"the {'x'.join(map(str, torus))} TPU torus" if torus else "the TPU topology")
  fits = (f" ({', '.join(map(str, _axis_sizes_that_fit(torus)))} here)" if torus else "")
  mesh = ", ".join(f"{n} {s}" for n, s in zip(names, shape))
  return (f"mesh ({mesh}) cannot be laid out on {where} of these {len(devices)} devices: "
          "each mesh axis must be a product of some of the torus's axis sizes"
          f"{fits}; change xltransfer.partitioning.create_mesh.{axis} (now "
          f"{shape[names.index(axis)]}) or the other create_mesh axes (mesh_utils: "
          f"{detail.split('. ')[0].strip()})")


def _split_over_hosts(shape, per_host: int):
  """(per-host shape, across-hosts shape) whose product is `shape`, filling each host from the
  last (model) axis: the layout in which a host holds one contiguous block of the mesh in
  row-major order. (None, None) when a host's block would not be a box."""
  within, left = [], per_host
  for size in reversed(shape):
    inner = math.gcd(size, left)
    if inner not in (size, left):
      return None, None
    within.insert(0, inner)
    left //= inner
  if left != 1:
    return None, None
  return tuple(within), tuple(size // inner for size, inner in zip(shape, within))


@gin.configurable(module="xltransfer.partitioning")
def create_mesh(data: int = -1, model: int = 1, fsdp: Optional[int] = None,
                devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A mesh over the present devices with axes (`data`[, `fsdp`], `model`).

  `model` varies fastest so that model-parallel groups sit on neighbouring devices: on TPU
  `mesh_utils` picks a topology-aware order, on multi-host GPU/CPU the model axis stays inside
  a host (NVLink first) and data/fsdp span hosts (`mesh_utils.create_hybrid_device_mesh` with
  processes as the slow-network granules). Axis sizes that do not fit the devices (or,
  on TPU, the torus) are a ConfigError naming the `create_mesh` binding to change.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = [DATA] + ([FSDP] if fsdp is not None else []) + [MODEL]
  sizes = _resolve_axis_sizes(len(devices), dict(
      zip(names, [data] + ([fsdp] if fsdp is not None else []) + [model])))
  shape = tuple(sizes[n] for n in names)
  platform = devices[0].platform
  num_hosts = len({d.process_index for d in devices})
  if platform == "tpu":
    try:
      device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except NotImplementedError as e:
      raise ConfigError(_torus_mismatch_message(names, shape, devices, str(e))) from e
  elif num_hosts > 1:
    per_host = len(devices) // num_hosts
    if per_host % sizes[MODEL]:
      raise ConfigError(f"the model axis ({sizes[MODEL]}) must divide the {per_host} devices "
                        "of each host so that model parallelism stays inside a host")
    within, across = _split_over_hosts(shape, per_host)
    if within is None:
      mesh = ", ".join(f"{n} {s}" for n, s in zip(names, shape))
      raise ConfigError(f"mesh ({mesh}) cannot give each of the {num_hosts} hosts a whole block "
                        f"of {per_host} devices: the axes after `data` must divide or be "
                        f"multiples of {per_host}; change the xltransfer.partitioning.create_mesh "
                        "axes")
    # Processes are the slow (DCN) granules: each host holds one contiguous block with the
    # whole model axis, and data/fsdp cross hosts in process order.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    try:
      device_array = mesh_utils.create_hybrid_device_mesh(within, across, devices=ordered,
                                                          process_is_granule=True)
    except ValueError as e:  # hosts with unequal numbers of devices
      raise ConfigError(f"mesh axes {sizes} over {num_hosts} hosts: {e}") from e
  else:
    device_array = np.asarray(sorted(devices, key=lambda d: d.id), dtype=object).reshape(shape)
  return Mesh(device_array, tuple(names))


@dataclasses.dataclass
class Partitioner:
  """A mesh plus logical rules: turns logical axis names into concrete shardings."""
  mesh: Mesh
  rules: Sequence[Any]

  def logical_to_mesh_spec(self, logical_spec: PartitionSpec) -> PartitionSpec:
    return nn.logical_to_mesh_axes(logical_spec, self.rules)

  def sharding(self, logical_spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(self.mesh, self.logical_to_mesh_spec(logical_spec))

  def shardings(self, logical_specs):
    """Maps a tree of logical `PartitionSpec`s to a tree of `NamedSharding`s."""
    return jax.tree.map(self.sharding, logical_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self, ndim: int = 2) -> NamedSharding:
    """Batch arrays: leading axis over the data axes, the rest replicated."""
    return self.sharding(PartitionSpec("batch", *([None] * (ndim - 1))))

  def data_parallel_size(self) -> int:
    """How many ways the batch axis is split on the mesh."""
    axes = self.logical_to_mesh_spec(PartitionSpec("batch"))[0]
    if axes is None:
      return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([self.mesh.shape[a] for a in axes]))

  def activation_context(self):
    """Context in which activations' logical constraints resolve to this mesh."""
    return _ActivationContext(self)

  def host_batch_slice(self, global_batch_size: int):
    """The contiguous rows of a global batch that this host's devices hold: (start, stop).

    Hosts that share the same data slice (the model axis crosses hosts) get the same rows.
    """
    sharding = self.batch_sharding(1)
    batch_axes = sharding.spec[0] if len(sharding.spec) else None
    batch_axes = () if batch_axes is None else (
        (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes))
    data_parallel = int(np.prod([self.mesh.shape[a] for a in batch_axes]))
    if global_batch_size % data_parallel:
      raise ConfigError(f"BATCH_SIZE {global_batch_size} is not divisible by the {data_parallel} "
                        f"data-parallel shards of mesh {dict(self.mesh.shape)}")
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [idx[0].stop if idx[0].stop is not None else global_batch_size
             for idx in index_map.values()]
    start, stop = min(starts), max(stops)
    covered = sorted(set(zip(starts, stops)))
    if sum(b - a for a, b in covered) != stop - start:
      raise ConfigError("this host's devices hold non-contiguous parts of the batch; reorder the "
                        "mesh so that each host's devices are adjacent along the data axis")
    return start, stop

  def data_shard(self, global_batch_size: int):
    """(shard_index, num_shards, per_host_batch) for the input pipeline of this host."""
    start, stop = self.host_batch_slice(global_batch_size)
    per_host = stop - start
    if global_batch_size % per_host:
      raise ConfigError(f"global batch {global_batch_size} is not a multiple of the per-host "
                        f"batch {per_host}")
    return start // per_host, global_batch_size // per_host, per_host


class _ActivationContext:
  """`with mesh` plus flax's logical rules, so `nn.with_logical_constraint` applies."""

  def __init__(self, partitioner: Partitioner):
    self._mesh = partitioner.mesh
    self._rules = nn.logical_axis_rules(partitioner.rules)

  def __enter__(self):
    self._mesh.__enter__()
    self._rules.__enter__()
    return self

  def __exit__(self, *exc):
    self._rules.__exit__(*exc)
    return self._mesh.__exit__(*exc)


def check_devices(global_batch_size: Optional[int] = None) -> str:
  """What a run's start-up does with the devices, and nothing more: the gin-configured mesh
  laid out on the devices present (and, given the batch size, this host's rows of it).

  The same ConfigError as the run's start names what does not fit; otherwise a one-line
  description. `study run` calls it through `train/eval --check_devices` before starting any
  stage, so a study on the wrong slice stops once instead of failing every stage.
  """
  partitioner = create_partitioner()
  line = (f"mesh {dict(partitioner.mesh.shape)} over {partitioner.mesh.devices.size} "
          f"{partitioner.mesh.devices.flat[0].platform} devices in {jax.process_count()} "
          "process(es)")
  if global_batch_size is not None:
    start, stop = partitioner.host_batch_slice(global_batch_size)
    line += f"; batch {global_batch_size}, this host's rows {start}:{stop}"
  return line


@gin.configurable(module="xltransfer.partitioning")
def create_partitioner(mesh: Optional[Mesh] = None, rules=None) -> Partitioner:
  """The run's partitioner: the gin-configured mesh and logical axis rules."""
  return Partitioner(mesh if mesh is not None else create_mesh(),
                     rules if rules is not None else logical_axis_rules())
