"""The plan of one run on one machine: compile its steps, measure them, give a verdict.

`compute_plan` parses the run's gin config as `xltransfer train` does (run_config.py), makes
the target's devices (devices.py), builds the trainer the run would build, compiles its train
step and its inference (or embedding) step on abstract, sharded inputs (compile.py), and
returns the per-device memory, the FLOPs (flops.py) and whether every step fits the device's
memory. It runs in the process whose jax can make the target's devices (commands/plan.py
starts a worker process for TPU and fake-device targets).
"""
import importlib.util
import logging
from typing import Any, Dict, List

import gin

from xltransfer.model.config import MODEL_SIZES
from xltransfer.planning import compile as compile_lib
from xltransfer.planning import devices as devices_lib
from xltransfer.planning import flops as flops_lib
from xltransfer.planning import machines
from xltransfer.planning import run_config
from xltransfer.train import run as run_lib


def compute_plan(args, target) -> Dict[str, Any]:
  """Compiles and measures (in the process whose jax can make the target's devices)."""
  gin_files = run_config.parse(list(args.gin_file) + list(args.mesh_file), args.gin_bindings,
                               args.gin_search_paths, getattr(args, "module", ()))
  devices = devices_lib.machine_devices(target)
  if target.kind == "local":
    target = _local_target(target, devices)
  run_config.bind_devices(devices)
  run = run_config.load(gin_files, args.inference_batch_size)
  notes = _check_vocabulary(run.model)  # Before compiling anything.
  if target.kind == "local":
    notes += _allocator_memory_note(target, devices[0].device_kind)
  partitioner = compile_lib.partitioner_for(run, devices)
  # The trainer `xltransfer train` builds from the same bindings.
  trainer = run_lib.build_trainer(run.model, partitioner, run.learning_rate, run.optimizer,
                                  run.num_microbatches, run.random_seed)
  state = compile_lib.state_report(trainer, args.top)
  logging.info("compiling the train step for %s", target.name)
  steps = {"train_step": compile_lib.plan_train_step(trainer, run).as_dict()}
  decoder = compile_lib.has_decoder(run.model)
  if not decoder:
    notes.append(
        f"the {run.model.kind} model has no decoder: greedy decoding is not planned"
        + ("" if args.skip_inference else "; its evaluation step, the retrieval evaluator's "
           "mean-pooled encoder embedding, is planned instead (embed_step)"))
  if not args.skip_inference:
    name = "inference step" if decoder else "embedding step"
    logging.info("compiling the %s for %s", name, target.name)
    plan_step = compile_lib.plan_inference_step if decoder else compile_lib.plan_embed_step
    step = plan_step(trainer, run).as_dict()
    steps[step["name"]] = step

  config = run.model.config
  lengths = run.task_feature_lengths
  flops = _flops(run, steps["train_step"]["compiler_flops"], target.chip.peak_flops,
                 len(devices))
  hbm = target.chip.hbm_bytes
  fits, verdict = _verdict(steps, hbm)
  return {
      "target": {"name": target.name, "kind": target.kind, "device": target.chip.name,
                 "device_kind": devices[0].device_kind, "num_devices": len(devices),
                 "hbm_bytes": hbm, "peak_flops": target.chip.peak_flops,
                 "compiler": ("libtpu (XLA:TPU)" if target.kind == "tpu" else
                              "XLA:CPU on fake host devices" if target.compiles_on_host
                              else f"XLA:{devices[0].platform.upper()}")},
      "config": {"gin_files": list(gin_files), "bindings": list(args.gin_bindings),
                 "model_size": _size_name(config), "model_kind": run.model.kind,
                 "feature_converter": run.feature_converter, "scan_layers": config.scan_layers,
                 "remat_policy": config.remat_policy, "batch_size": run.batch_size,
                 "task_feature_lengths": lengths, "pack": run.pack,
                 "num_microbatches": run.num_microbatches,
                 "inference_batch_size": run.inference_batch_size,
                 "mesh": {k: int(v) for k, v in partitioner.mesh.shape.items()},
                 "rules": _rules_summary(partitioner.rules)},
      "state": state,
      "steps": steps,
      "notes": notes,
      "flops": flops,
      "fits": fits,
      "verdict": verdict,
  }


def _check_vocabulary(model) -> List[str]:
  """The training datasets' vocabularies against the model's (data/vocab_check.py), or, where
  seqio is not installed (a GPU image with the engine core only), a note that there was nothing
  to check: the datasets are seqio tasks, which cannot have been registered."""
  if importlib.util.find_spec("seqio") is None:
    note = ("vocabulary check skipped: seqio is not installed, so no seqio task (the training "
            "datasets) can be registered to check against the model's vocabulary")
    logging.info(note)
    return [note]
  # Imported after the parse: it loads seqio and TensorFlow, which a config error need not
  # wait for. The parse has locked gin's registry, and data/vocab.py registers a configurable
  # (a gin file for a released size does not import it, as the tiny model's does).
  with gin.unlock_config():
    from xltransfer.data import vocab_check  # pylint: disable=import-outside-toplevel
  vocab_check.check_gin_train_datasets(model)
  return []


def _flops(run, compiler_flops_per_device, peak_flops_per_device, num_devices):
  """Model FLOPs per step and the throughput they allow at the chips' peak (100% MFU)."""
  lengths = run.task_feature_lengths
  model_flops = flops_lib.model_train_flops_per_step(run.model, run.batch_size, lengths)
  peak_total = peak_flops_per_device * num_devices
  tokens = run.batch_size * (lengths["inputs"] + lengths["targets"])
  return {
      "model_flops_per_step": float(model_flops),
      "compiler_flops_per_step": (None if compiler_flops_per_device is None
                                  else compiler_flops_per_device * num_devices),
      "tokens_per_step": tokens,
      "ceiling_steps_per_second": peak_total / model_flops,
      "ceiling_tokens_per_second": peak_total / model_flops * tokens,
  }


def _verdict(steps, hbm: int):
  """(fits, one line): every step compiled and its peak is within the device's HBM."""
  gib = machines.GIB
  problems = []
  for step in steps.values():
    if step["out_of_memory"]:
      problems.append(f"{step['name']}: the compiler ran out of memory")
    elif step["peak_bytes"] > hbm:
      problems.append(f"{step['name']}: peak {step['peak_bytes'] / gib:.2f} GiB > "
                      f"{hbm / gib:.2f} GiB HBM")
  if problems:
    return False, "DOES NOT FIT: " + "; ".join(problems)
  least = min(hbm - s["peak_bytes"] for s in steps.values())
  return True, f"FITS ({least / gib:.2f} GiB headroom on the fullest step)"


def _size_name(config) -> str:
  for name, size in MODEL_SIZES.items():
    if (size.emb_dim, size.num_heads, size.mlp_dim, size.num_encoder_layers) == (
        config.emb_dim, config.num_heads, config.mlp_dim, config.num_encoder_layers):
      return name
  return f"custom (d_model {config.emb_dim})"


def _rules_summary(rules) -> str:
  """The partitioned logical axes only (the replicated ones are the same for every preset)."""
  return ", ".join(f"{name}->{axis}" for name, axis in rules if axis is not None)


def _allocator_memory_note(target, device_kind) -> List[str]:
  """Says so where the local device's memory is the allocator's limit, below the chip's HBM:
  on a GPU, jax preallocates 75% of it by default (an H200's 139.8 GiB gives 104.85 GiB), and
  that limit is what a step must fit in."""
  chip_hbm = machines.local_chip(device_kind, None).hbm_bytes
  if target.chip.device_kind is None or target.chip.hbm_bytes >= chip_hbm:
    return []
  return [f"device memory: the {target.chip.hbm_bytes / machines.GIB:.2f} GiB jax's allocator "
          f"may use (its bytes_limit; XLA_PYTHON_CLIENT_MEM_FRACTION sets it, 0.75 by default), "
          f"not the chip's {chip_hbm / machines.GIB:.0f} GiB"]


def _local_target(target, devices):
  """The machine of `--topology local`: the chip its device_kind names (machines.local_chip),
  with the memory the allocator reports it may use where it reports one."""
  del target  # Everything comes from the devices.
  stats = {}
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    pass  # Backends without memory statistics (the CPU of older jax versions) raise.
  kind = devices[0].device_kind
  chip = machines.local_chip(kind, stats.get("bytes_limit"))
  if chip.device_kind is None and devices[0].platform != "cpu":
    logging.warning("no peak FLOP/s known for device kind %r (planning/machines.py CHIPS): the "
                    "ceiling throughput assumes a nominal %.0e FLOP/s per device", kind,
                    chip.peak_flops)
  return machines.Machine("local", f"local ({len(devices)} × {kind})", chip, len(devices))
