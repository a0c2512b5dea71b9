"""Lowers and compiles the trainer's own steps on abstract, sharded inputs, and measures them.

Nothing is allocated. The trainer is the one `xltransfer.train.train` builds
(`run.build_trainer`), and its train step is lowered through `Trainer.lower_train_step`: the
same jitted program, with its in/out shardings and the state donated, on `ShapeDtypeStruct`s
carrying the shardings derived from the logical axis rules; its batch has the features of the
run's own feature converter (`DatasetConfig.feature_converter`), as training reads them.
Greedy decoding is jitted as `evaluation.inference.Inference` jits it. A model without a
decoder (the dual encoder) has no decoding step: its evaluation step, the pooled retrieval
embedding, is compiled instead. A TPU compile that does not fit in HBM fails inside XLA with
RESOURCE_EXHAUSTED; that is a verdict, not an error.
"""
import dataclasses
import re
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from xltransfer.errors import ConfigError
from xltransfer.evaluation import retrieval
from xltransfer.partitioning import create_partitioner
from xltransfer.train import feature_converters
from xltransfer.train import state as state_lib
from xltransfer.train.trainer import Trainer

_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory")


@dataclasses.dataclass
class StepPlan:
  """One compiled program: per-device memory (bytes), XLA's FLOP count, timings."""
  name: str
  lower_seconds: float
  compile_seconds: float = 0.0
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  peak_bytes: int = 0
  compiler_flops: Optional[float] = None
  out_of_memory: Optional[str] = None

  def as_dict(self):
    return dataclasses.asdict(self)


def partitioner_for(run, devices):
  """The run's partitioner (gin-built on the bound devices) or the default one."""
  partitioner = run.partitioner if run.partitioner is not None else create_partitioner()
  mesh_devices = set(partitioner.mesh.devices.flat)
  if mesh_devices != set(devices):
    raise ConfigError("the run's partitioner is not built on the target's devices; bind its mesh "
                      "through xltransfer.partitioning.create_mesh")
  return partitioner


def abstract_batch(run, trainer: Trainer) -> Dict[str, jax.ShapeDtypeStruct]:
  """The feature converter's batch (packed or not), sharded as the trainer expects."""
  # The features of the trainer's input pipeline's converter (train/input.py), stated as data
  # so that a plan needs no seqio.
  lengths = feature_converters.model_feature_lengths(run.feature_converter, run.pack,
                                                     run.task_feature_lengths)
  return trainer.abstract_batch(run.batch_size, lengths)


def has_decoder(model) -> bool:
  return "decoder" not in model.dropped_subtrees


def _measure(name: str, lower: Callable[[], Any]) -> StepPlan:
  start = time.perf_counter()
  lowered = lower()
  plan = StepPlan(name, lower_seconds=time.perf_counter() - start)
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if not _OOM.search(str(e)):
      raise
    plan.compile_seconds = time.perf_counter() - start
    plan.out_of_memory = str(e).strip().splitlines()[0]
    return plan
  plan.compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  if memory is not None:
    plan.argument_bytes = int(memory.argument_size_in_bytes)
    plan.output_bytes = int(memory.output_size_in_bytes)
    plan.alias_bytes = int(memory.alias_size_in_bytes)
    plan.temp_bytes = int(memory.temp_size_in_bytes)
    plan.code_bytes = int(memory.generated_code_size_in_bytes)
    # Donated outputs reuse their inputs' buffers (alias); code occupies HBM as well.
    live = (plan.argument_bytes + plan.output_bytes - plan.alias_bytes + plan.temp_bytes
            + plan.code_bytes)
    plan.peak_bytes = max(int(getattr(memory, "peak_memory_in_bytes", 0) or 0), live)
  costs = compiled.cost_analysis()
  costs = costs[0] if isinstance(costs, (list, tuple)) and costs else costs
  if costs and "flops" in costs:
    plan.compiler_flops = float(costs["flops"])
  return plan


def plan_train_step(trainer: Trainer, run) -> StepPlan:
  batch = abstract_batch(run, trainer)
  # The trainer's jitted step itself (in/out shardings, donated state), not a copy.
  return _measure("train_step", lambda: trainer.lower_train_step(None, batch))


def _plan_inference(name: str, fn: Callable, trainer: Trainer, run) -> StepPlan:
  """`fn(params, tokens [inference batch, inputs length])` jitted as `Inference` jits it."""
  partitioner = trainer.partitioner
  batch_size = run.inference_batch_size
  shards = partitioner.data_parallel_size()
  if batch_size % shards:
    raise ConfigError(f"inference batch size {batch_size} must be a multiple of the {shards} "
                      "data-parallel shards")
  params = trainer.sharded_abstract_state().params
  tokens = jax.ShapeDtypeStruct((batch_size, run.task_feature_lengths["inputs"]), jnp.int32,
                                sharding=partitioner.batch_sharding(2))
  jitted = jax.jit(fn, out_shardings=partitioner.replicated())

  def lower():
    with partitioner.activation_context():
      return jitted.lower(params, tokens)

  return _measure(name, lower)


def plan_inference_step(trainer: Trainer, run) -> StepPlan:
  """Greedy decoding of TASK_FEATURE_LENGTHS['targets'] tokens, as the evaluator runs it."""
  model = trainer.model
  if not has_decoder(model):
    raise ConfigError(f"the {model.kind} model has no decoder to plan decoding for; plan its "
                      "embedding step (plan_embed_step)")
  decode_length = run.task_feature_lengths["targets"]
  return _plan_inference("inference_step",
                         lambda p, t: model.greedy_decode(p, t, decode_length), trainer, run)


def plan_embed_step(trainer: Trainer, run) -> StepPlan:
  """The mean-pooled encoder embedding of TASK_FEATURE_LENGTHS['inputs'] tokens, as the
  retrieval evaluator runs it (`evaluation.retrieval.embed`): a dual encoder's inference."""
  model = trainer.model
  return _plan_inference("embed_step",
                         lambda p, t: retrieval.pooled_embeddings(model, p, t), trainer, run)


def _nbytes(shape, dtype) -> int:
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def state_report(trainer: Trainer, top: int = 8) -> Dict[str, Any]:
  """Global and per-device bytes of params and optimizer state; the largest arrays' shardings."""
  logical = state_lib.train_state_logical_axes(trainer.model, trainer.optimizer,
                                               trainer.abstract_state)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  flat_state = jax.tree_util.tree_flatten_with_path(trainer.abstract_state)[0]
  flat_shardings = jax.tree.leaves(trainer.state_shardings)
  flat_logical = jax.tree.leaves(logical, is_leaf=is_spec)
  totals = {"params": 0, "opt_state": 0, "step": 0}
  per_device = dict(totals)
  arrays: List[Dict[str, Any]] = []
  for (path, leaf), sharding, axes in zip(flat_state, flat_shardings, flat_logical):
    group = getattr(path[0], "name", str(path[0]))
    shard_shape = sharding.shard_shape(leaf.shape)
    global_bytes, device_bytes = _nbytes(leaf.shape, leaf.dtype), _nbytes(shard_shape, leaf.dtype)
    totals[group] += global_bytes
    per_device[group] += device_bytes
    arrays.append({"path": jax.tree_util.keystr(path), "shape": list(leaf.shape),
                   "dtype": str(leaf.dtype), "logical_axes": [str(a) for a in axes],
                   "mesh_axes": [str(a) for a in sharding.spec],
                   "per_device_shape": list(shard_shape), "bytes": global_bytes,
                   "per_device_bytes": device_bytes})
  arrays.sort(key=lambda a: -a["bytes"])
  params = trainer.abstract_state.params
  return {
      "num_parameters": int(sum(np.prod(p.shape, dtype=np.int64) for p in jax.tree.leaves(params))),
      "total_bytes": totals,
      "per_device_bytes": per_device,
      "largest_arrays": arrays[:top],
  }
