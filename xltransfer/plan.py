"""`xltransfer plan`: prove that a gin config fits a machine before anyone pays for it.

  xltransfer plan --gin_file=scale/mt5_xxl_finetune_v4-128.gin --topology v4:4x4x4
  xltransfer plan --gin_file=models/mt5_small.gin --gin_file=runs/finetune.gin \
      --mesh_file=meshes/gpu_h100_8.gin --topology h100:8 --json

Lowers and compiles the trainer's real train step and the greedy inference step on abstract,
sharded inputs (nothing is allocated) for the target, and prints per-device argument, output,
temp and peak bytes against the device's HBM, FLOPs per step and the tokens/s ceiling at
100% MFU, the sharding of the largest arrays, compile times and a verdict. A dual-encoder run
(runs/dual_encoder_finetune.gin) has no decoder: its retrieval embedding step is compiled in
place of greedy decoding, and the report says so.

Targets (--topology): TPU topologies (v4:4x4x8, v5e:16x16, v5p:4x4x4, v6e:8x8) or gcloud
accelerator types (v4-128, v5litepod-256, v5p-128), compiled by libtpu's TPU compiler (the
`tpu` extra; no TPU needed); GPU nodes (h100:8, h100:4x8, a100:8) and fake CPU meshes
(cpu:8), compiled by XLA:CPU on fake host devices (memory is then an estimate); `local`, the
devices of this machine. TPU and fake-device targets compile in a worker process that gets
the environment they need.

Exit status: 0 fits, 1 does not fit (the compiler ran out of memory, or the peak exceeds the
device's HBM), 2 a configuration error (message on stderr), 3 the worker process failed.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

from xltransfer.errors import UserError
from xltransfer.planning import devices as devices_lib
from xltransfer.planning import targets as targets_lib

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_CONFIG_ERROR, EXIT_WORKER_FAILED = 0, 1, 2, 3
_RESULT_ENV = "XLTRANSFER_PLAN_RESULT"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="xltransfer plan", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable), as for `xltransfer train`")
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--gin_search_paths", action="append", default=[])
  parser.add_argument("--mesh_file", action="append", default=[],
                      help="mesh gin file(s) applied after --gin_file (e.g. meshes/tpu_v4_64.gin)")
  parser.add_argument("--topology", default="local",
                      help="v4:4x4x8, v5e:16x16, v5p-128, h100:8, h100:2x8, cpu:8 or local")
  parser.add_argument("--hbm_gib", type=float, default=None,
                      help="device memory to check against instead of the chip's HBM")
  parser.add_argument("--inference_batch_size", type=int, default=None,
                      help="rows per decoding call (default: the eval dataset's batch size)")
  parser.add_argument("--skip_inference", action="store_true",
                      help="compile only the train step (no decoding or embedding step)")
  parser.add_argument("--top", type=int, default=8, help="largest arrays to list")
  parser.add_argument("--json", action="store_true", help="print the plan as JSON")
  parser.add_argument("--output", default=None, help="also write the JSON plan to this file")
  return parser


def _parse_args(argv: Sequence[str]):
  from xltransfer.train.main import split_gin_flags  # pylint: disable=import-outside-toplevel
  rest, bindings = split_gin_flags(argv)
  args = _parser().parse_args(rest)
  args.gin_bindings = list(args.gin_bindings) + bindings
  target = targets_lib.parse_target(args.topology)
  if args.hbm_gib is not None:
    if args.hbm_gib <= 0:
      raise UserError(f"--hbm_gib must be positive, got {args.hbm_gib}")
    target = target.with_hbm(int(args.hbm_gib * targets_lib.GIB))
  return args, target


def compute_plan(args, target) -> Dict[str, Any]:
  """Compiles and measures (in the process whose jax can make the target's devices)."""
  # pylint: disable=import-outside-toplevel
  from xltransfer.data import vocab_check
  from xltransfer.planning import compile as compile_lib
  from xltransfer.planning import run_config
  from xltransfer.train import run as run_lib

  gin_files = run_config.parse(list(args.gin_file) + list(args.mesh_file), args.gin_bindings,
                               args.gin_search_paths)
  devices = devices_lib.target_devices(target)
  if target.kind == "local":
    target = _local_target(target, devices)
  run_config.bind_devices(devices)
  run = run_config.load(gin_files, args.inference_batch_size)
  vocab_check.check_gin_train_datasets(run.model)  # Before compiling anything.
  partitioner = compile_lib.partitioner_for(run, devices)
  # The trainer `xltransfer train` builds from the same bindings.
  trainer = run_lib.build_trainer(run.model, partitioner, run.learning_rate, run.optimizer,
                                  run.num_microbatches, run.random_seed)
  state = compile_lib.state_report(trainer, args.top)
  logging.info("compiling the train step for %s", target.name)
  steps = {"train_step": compile_lib.plan_train_step(trainer, run).as_dict()}
  decoder = compile_lib.has_decoder(run.model)
  notes = [] if decoder else [
      f"the {run.model.kind} model has no decoder: greedy decoding is not planned"
      + ("" if args.skip_inference else "; its evaluation step, the retrieval evaluator's "
         "mean-pooled encoder embedding, is planned instead (embed_step)")]
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


def _flops(run, compiler_flops_per_device, peak_flops_per_device, num_devices):
  """Model FLOPs per step and the throughput they allow at the chips' peak (100% MFU)."""
  from xltransfer.planning import flops as flops_lib  # pylint: disable=import-outside-toplevel
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
  gib = targets_lib.GIB
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
  from xltransfer.model.config import MODEL_SIZES  # pylint: disable=import-outside-toplevel
  for name, size in MODEL_SIZES.items():
    if (size.emb_dim, size.num_heads, size.mlp_dim, size.num_encoder_layers) == (
        config.emb_dim, config.num_heads, config.mlp_dim, config.num_encoder_layers):
      return name
  return f"custom (d_model {config.emb_dim})"


def _rules_summary(rules) -> str:
  """The partitioned logical axes only (the replicated ones are the same for every preset)."""
  return ", ".join(f"{name}->{axis}" for name, axis in rules if axis is not None)


def _local_target(target, devices):
  stats = {}
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    pass
  kind = devices[0].device_kind
  chip = targets_lib.Chip(kind, int(stats.get("bytes_limit", targets_lib.CHIPS["cpu"].hbm_bytes)),
                          targets_lib.CHIPS["cpu"].peak_flops)
  for known in targets_lib.CHIPS.values():
    if known.device_kind == kind:
      chip = known
  return targets_lib.Target("local", f"local ({len(devices)} × {kind})", chip, len(devices))


def _run_worker(argv: Sequence[str], target):
  """Runs this command again in a process set up for the target: (exit status, plan)."""
  env = devices_lib.worker_environment(target, os.environ)
  with tempfile.TemporaryDirectory(prefix="xltransfer_plan_") as tmp:
    result_path = os.path.join(tmp, "plan.json")
    env[_RESULT_ENV] = result_path
    # The worker logs to stderr as it goes (a pod-sized compile takes minutes).
    proc = subprocess.run([sys.executable, "-m", "xltransfer.plan", *argv], env=env,
                          stdout=subprocess.DEVNULL, check=False)
    if proc.returncode == EXIT_CONFIG_ERROR:
      return EXIT_CONFIG_ERROR, None  # The worker printed the message.
    if proc.returncode != 0 or not os.path.exists(result_path):
      print(f"xltransfer plan: the compile worker for {target.name} failed (exit "
            f"{proc.returncode}); its log is above", file=sys.stderr)
      return EXIT_WORKER_FAILED, None
    with open(result_path) as f:
      return EXIT_FITS, json.load(f)


def _write_output(path: Optional[str], plan: Dict[str, Any]):
  if path:
    with open(path, "w") as f:
      json.dump(plan, f, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args, target = _parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  result_path = os.environ.get(_RESULT_ENV)
  if result_path or target.kind == "local":
    plan = compute_plan(args, target)
    if result_path:
      with open(result_path, "w") as f:
        json.dump(plan, f)
      _write_output(args.output, plan)  # Kept even if the parent is gone (long compiles).
      return EXIT_FITS
  else:
    status, plan = _run_worker(argv, target)
    if plan is None:
      return status
  _write_output(args.output, plan)
  if args.json:
    print(json.dumps(plan, indent=2))
  else:
    from xltransfer.planning.report import format_text  # pylint: disable=import-outside-toplevel
    print(format_text(plan))
  return EXIT_FITS if plan["fits"] else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as error:
    print(f"xltransfer plan: error: {error}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)
