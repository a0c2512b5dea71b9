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
`tpu` extra; no TPU needed); GPU nodes (h100:8, h100:4x8, h200:8, a100:8) and fake CPU meshes
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

from xltransfer import gin_utils
from xltransfer.errors import UserError
from xltransfer.planning import devices as devices_lib
from xltransfer.planning import machines

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_CONFIG_ERROR, EXIT_WORKER_FAILED = 0, 1, 2, 3
_RESULT_ENV = "XLTRANSFER_PLAN_RESULT"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="xltransfer plan", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable), as for `xltransfer train`")
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--gin_search_paths", action="append", default=[])
  gin_utils.add_module_flag(parser)
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
  rest, bindings = gin_utils.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  args.gin_bindings = list(args.gin_bindings) + bindings
  target = machines.parse_machine(args.topology)
  if args.hbm_gib is not None:
    if args.hbm_gib <= 0:
      raise UserError(f"--hbm_gib must be positive, got {args.hbm_gib}")
    target = target.with_hbm(int(args.hbm_gib * machines.GIB))
  return args, target


def _run_worker(argv: Sequence[str], target):
  """Runs this command again in a process set up for the target: (exit status, plan)."""
  env = devices_lib.worker_environment(target, os.environ)
  with tempfile.TemporaryDirectory(prefix="xltransfer_plan_") as tmp:
    result_path = os.path.join(tmp, "plan.json")
    env[_RESULT_ENV] = result_path
    # The worker logs to stderr as it goes (a pod-sized compile takes minutes).
    proc = subprocess.run([sys.executable, "-m", "xltransfer", "plan", *argv], env=env,
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
    from xltransfer.planning import plan as plan_lib  # pylint: disable=import-outside-toplevel
    plan = plan_lib.compute_plan(args, target)
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
