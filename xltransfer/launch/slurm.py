"""SLURM launcher for GPU clusters: writes an sbatch script that srun's xltransfer on every node.

    python -m xltransfer.launch.slurm submit --nodes=2 --partition=gpu --time=24:00:00 \
        --account=my-lab --venv=.venv -- train \
        --gin_file=gin/scale/mt5_xxl_finetune_8xh100.gin --gin.MODEL_DIR="'/runs/x'"
    python -m xltransfer.launch.slurm submit ... --dry-run    # print script and sbatch argv
    (`--dry-run` or `--dry_run`, anywhere before `--`; after `--` it is the xltransfer
    command's flag, and `submit` refuses it unless the launcher dry-runs too)
    python -m xltransfer.launch.slurm script ...               # print the script only

One JAX process per node by default, owning all of the node's GPUs (so that the mesh keeps
model parallelism on NVLink). Inside the job every process finds the coordinator (first node)
and its rank from SLURM's environment via `xltransfer.launch.slurm_env.distributed_env()`.

Resources go on sbatch's command line as argv elements, not as `#SBATCH` lines, so no value
is ever re-parsed; the script itself quotes every user value with `shlex.quote`.
"""
import argparse
import dataclasses
import os
import pathlib
import re
import shlex
import sys
from typing import Optional, Sequence

from xltransfer import command_line
from xltransfer.errors import UserError
from xltransfer.launch import commands
from xltransfer.launch import slurm_env

# The in-job half lives in slurm_env; also reachable here, next to the launcher that sets it up.
distributed_env = slurm_env.distributed_env
initialize_jax_distributed = slurm_env.initialize_jax_distributed

PROG = "xltransfer launch slurm"
SBATCH_HINT = "Run this on a SLURM login node, where sbatch is installed."
_TIME = re.compile(r"^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Job:
  """One sbatch submission: resources, where and how to run, and the xltransfer command."""
  xltransfer_args: tuple
  nodes: int = 1
  gpus_per_node: int = 8
  processes_per_node: int = 1
  job_name: str = "xltransfer"
  partition: Optional[str] = None
  time: Optional[str] = None
  account: Optional[str] = None
  qos: Optional[str] = None
  constraint: Optional[str] = None
  gres: Optional[str] = None
  cpus_per_task: Optional[int] = None
  mem: Optional[str] = None
  output: str = "launch_logs/slurm/%x-%j.out"
  workdir: str = "."
  venv: Optional[str] = None
  executable: str = "xltransfer"
  env: tuple = ()
  sbatch_args: tuple = ()

  def validate(self) -> "Job":
    if self.nodes < 1:
      raise UserError(f"--nodes={self.nodes} must be at least 1")
    if self.gpus_per_node < 0:
      raise UserError(f"--gpus-per-node={self.gpus_per_node} must not be negative")
    if self.processes_per_node not in (1, self.gpus_per_node):
      raise UserError(f"--processes-per-node={self.processes_per_node}: use 1 (one process "
                      f"per node owns its GPUs) or {self.gpus_per_node} (one per GPU)")
    if self.time is not None and not _TIME.match(self.time):
      raise UserError(f"--time={self.time!r}: use MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
    if self.cpus_per_task is not None and self.cpus_per_task < 1:
      raise UserError(f"--cpus-per-task={self.cpus_per_task} must be at least 1")
    for assignment in self.env:
      name, sep, _ = assignment.partition("=")
      if not sep or not _ENV_NAME.match(name):
        raise UserError(f"--env {assignment!r}: expected NAME=VALUE")
    for value, flag in ((self.job_name, "--job-name"), (self.output, "--output")):
      if not value or "\n" in value:
        raise UserError(f"{flag}={value!r} must be one non-empty line")
    return self


def sbatch_command(job: Job, script_path) -> list[str]:
  """The exact `sbatch` argv that submits `script_path` with the job's resources."""
  argv = ["sbatch", f"--job-name={job.job_name}", f"--nodes={job.nodes}",
          f"--ntasks-per-node={job.processes_per_node}"]
  if job.gres:
    argv.append(f"--gres={job.gres}")
  elif job.gpus_per_node:
    argv.append(f"--gpus-per-node={job.gpus_per_node}")
  optional = (("partition", job.partition), ("time", job.time), ("account", job.account),
              ("qos", job.qos), ("constraint", job.constraint),
              ("cpus-per-task", job.cpus_per_task), ("mem", job.mem))
  argv += [f"--{flag}={value}" for flag, value in optional if value is not None]
  argv.append(f"--output={job.output}")
  argv += list(job.sbatch_args)
  argv.append(str(script_path))
  return argv


def srun_command(job: Job) -> list[str]:
  """The srun line inside the script: the xltransfer command once per task."""
  argv = ["srun", f"--nodes={job.nodes}", f"--ntasks-per-node={job.processes_per_node}",
          "--kill-on-bad-exit=1"]
  if job.processes_per_node > 1:
    argv.append("--gpus-per-task=1")  # SLURM then gives each task its own CUDA device
  return argv + [job.executable] + list(job.xltransfer_args)


def batch_script(job: Job, sbatch_argv: Optional[Sequence[str]] = None) -> str:
  """The sbatch script's text."""
  q = shlex.quote
  lines = ["#!/bin/bash", "# Written by xltransfer.launch.slurm."]
  if sbatch_argv is not None:
    lines.append(f"# Submitted with: {shlex.join(sbatch_argv)}")
  lines += ["set -eo pipefail", f"cd {q(str(job.workdir))}"]
  if job.venv:
    lines.append(f"source {q(str(job.venv) + '/bin/activate')}")
  lines.append("export PYTHONUNBUFFERED=1")
  lines += [f"export {q(assignment)}" for assignment in job.env]
  var = slurm_env.COORDINATOR_ADDRESS_VAR
  port = f"$(({slurm_env.PORT_BASE} + SLURM_JOB_ID % {slurm_env.PORT_SPREAD}))"
  lines += [
      "# The first node of the allocation hosts jax.distributed's coordinator; the port",
      "# follows the job id so that two jobs sharing a node do not collide. Without",
      "# scontrol, distributed_env() reads SLURM_JOB_NODELIST itself.",
      'mapfile -t xltransfer_hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
      'if [ -n "${xltransfer_hosts[0]:-}" ]; then',
      f'  export {var}="${{xltransfer_hosts[0]}}:{port}"',
      "fi",
      f'echo "xltransfer: $SLURM_JOB_NUM_NODES node(s), '
      f'coordinator ${{{var}:-from the node list}}"',
      shlex.join(srun_command(job)),
  ]
  return "\n".join(lines) + "\n"


def _check_command(xltransfer_args: Sequence[str]) -> tuple:
  if not xltransfer_args:
    raise UserError("give the xltransfer command after `--`, e.g. "
                    "`-- train --gin_file=gin/runs/finetune.gin ...`")
  if xltransfer_args[0] not in command_line.COMMANDS:
    raise UserError(f"unknown xltransfer command {xltransfer_args[0]!r} after `--`; one of: "
                    f"{', '.join(command_line.COMMANDS)}")
  return tuple(xltransfer_args)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
  script = sub.add_parser("script", help="print the sbatch script")
  submit = sub.add_parser("submit", help="write the script and submit it with sbatch")
  submit.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the script and the exact sbatch command; run nothing "
                      "(anywhere before `--`)")
  submit.add_argument("--script-path", help="where to write the script "
                      "(default: launch_logs/slurm/JOB_NAME.sbatch)")
  for p in (script, submit):
    p.add_argument("--nodes", type=int, default=1, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    p.add_argument("--processes-per-node", type=int, default=1,
                   help="1 (one JAX process owns all GPUs of its node) or one per GPU")
    p.add_argument("--gres", help="request GPUs as --gres instead, e.g. gpu:h100:8")
    p.add_argument("--partition")
    p.add_argument("--time", help="wall-clock limit, e.g. 24:00:00 or 2-00:00:00")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node, e.g. 0 (all) or 500G")
    p.add_argument("--job-name", help="default: xltransfer-COMMAND")
    p.add_argument("--output", default=Job.output,
                   help="stdout/stderr file (%%x job name, %%j job id)")
    p.add_argument("--workdir", default=".",
                   help="folder the command runs in (the project checkout)")
    p.add_argument("--venv", help="virtual environment to activate on the nodes")
    p.add_argument("--executable", default="xltransfer", help="the xltransfer command")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for the job (repeatable)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more sbatch argument, e.g. --sbatch-arg=--exclusive (repeatable)")
  return parser


def job_from_args(args, xltransfer_args: Sequence[str]) -> Job:
  xltransfer_args = _check_command(xltransfer_args)
  return Job(
      xltransfer_args=xltransfer_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
      processes_per_node=args.processes_per_node,
      job_name=args.job_name or f"xltransfer-{xltransfer_args[0]}",
      partition=args.partition, time=args.time, account=args.account, qos=args.qos,
      constraint=args.constraint, gres=args.gres, cpus_per_task=args.cpus_per_task,
      mem=args.mem, output=args.output, workdir=os.path.abspath(args.workdir),
      venv=os.path.abspath(args.venv) if args.venv else None, executable=args.executable,
      env=tuple(args.env), sbatch_args=tuple(args.sbatch_arg)).validate()


def _prepare_output_dir(output: str) -> None:
  # sbatch does not create the folder of --output, and the job would fail without a log.
  folder = pathlib.Path(output).parent
  if "%" not in str(folder):
    folder.mkdir(parents=True, exist_ok=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  own_args, xltransfer_args = commands.split_at_double_dash(argv)
  own_args, dry_run = commands.take_dry_run(own_args)
  args = build_parser().parse_args(own_args)
  # `script` only prints, so a dry run of it is the same thing.
  args.dry_run = getattr(args, "dry_run", False) or dry_run or args.action == "script"
  job = job_from_args(args, xltransfer_args)
  commands.check_command_dry_run(job.xltransfer_args, args.dry_run, "submit the job")
  commands.refuse_study_run_on_several_hosts(
      job.xltransfer_args, job.nodes * job.processes_per_node, "SLURM tasks")
  commands.warn_missing_gin_files(job.xltransfer_args)
  if args.action == "script":
    sys.stdout.write(batch_script(job))
    return 0
  script_path = pathlib.Path(args.script_path or
                             pathlib.Path("launch_logs") / "slurm" / f"{job.job_name}.sbatch")
  sbatch = sbatch_command(job, script_path)
  script = batch_script(job, sbatch)
  if args.dry_run:
    print(f"# ----- {script_path} -----")
    sys.stdout.write(script)
    print("# ----- submit -----")
    commands.print_commands([sbatch])
    return 0
  commands.require_executable("sbatch", SBATCH_HINT)
  script_path.parent.mkdir(parents=True, exist_ok=True)
  script_path.write_text(script)
  _prepare_output_dir(job.output)
  out = commands.run_capture(sbatch)
  print(out.strip())
  print(f"script: {script_path}; output: {job.output}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(command_line.run_command(main, PROG))
