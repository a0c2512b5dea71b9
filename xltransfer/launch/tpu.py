"""Cloud TPU VM launcher: create a slice, install xltransfer on every host, run, tear down.

    python -m xltransfer.launch.tpu create NAME --zone=Z --accelerator-type=v4-128
    python -m xltransfer.launch.tpu setup  NAME --zone=Z --install-python=3.11
    python -m xltransfer.launch.tpu run    NAME --zone=Z --accelerator-type=v4-128 -- \
        train --gin_file=gin/scale/mt5_xxl_finetune_v4-128.gin --gin.MODEL_DIR="'gs://bucket/run'"
    python -m xltransfer.launch.tpu delete NAME --zone=Z

The same `xltransfer ...` command runs on every worker; on a multi-host slice the trainer's
`jax.distributed.initialize()` finds its peers from the TPU VM metadata. Every subcommand takes
`--dry-run` (or `--dry_run`) anywhere before `--`, which prints the exact gcloud commands and
runs nothing; a dry-run flag after `--` belongs to the xltransfer command, and `run` refuses
it unless the launcher dry-runs too. `setup` packs the checkout holding the working directory.

Quoting: local commands are argv lists (no local shell). The one shell string is the remote
`--command` of `gcloud ... ssh`, which the worker's login shell parses; it is built from argv
lists with `shlex.quote` on every element, so `shlex.split` of it gives the argv back.
"""
import argparse
import datetime
import pathlib
import re
import shlex
import sys
import tempfile
from typing import Optional, Sequence

from xltransfer import command_line
from xltransfer.errors import UserError
from xltransfer.planning import accelerators
from xltransfer.launch import commands
from xltransfer.launch import streaming

PROG = "xltransfer launch tpu"
GCLOUD_HINT = ("Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), "
               "then `gcloud auth login`.")
# Paths on the workers are relative to the login user's home directory, where ssh starts.
REMOTE_ARCHIVE = "xltransfer-src.tar.gz"
REMOTE_LOG_DIR = "xltransfer_logs"
REMOTE_VENV = ".venv"  # inside the remote project directory
ARCHIVE_EXCLUDES = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache",
                    "launch_logs", "demo_output")

_TPU_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYTHON_VERSION = re.compile(r"^3\.[0-9]+$")


# ----------------------------------------------------------------------------- validation


def _check_name(name: str) -> str:
  if not _TPU_NAME.match(name):
    raise UserError(f"TPU name {name!r}: use lowercase letters, digits and hyphens, starting "
                    "with a letter (at most 63 characters)")
  return name


def _check_zone(zone: Optional[str]) -> str:
  if not zone:
    raise UserError("--zone is required (e.g. --zone=us-central2-b for v4, us-east5-a for v5p)")
  if not _ZONE.match(zone):
    raise UserError(f"--zone={zone!r} is not a zone name such as us-central2-b or europe-west4-a")
  return zone


def _check_run_name(run_name: str) -> str:
  if not _RUN_NAME.match(run_name):
    raise UserError(f"--run-name={run_name!r}: use letters, digits, '.', '_' and '-' only "
                    "(it names log files)")
  return run_name


def _check_remote_dir(remote_dir: str) -> str:
  if not remote_dir or remote_dir.startswith("-") or "\n" in remote_dir:
    raise UserError(f"--remote-dir={remote_dir!r} is not a usable directory name")
  if remote_dir.startswith("~"):
    # Every value is quoted for the remote shell, so `~` would not expand.
    raise UserError(f"--remote-dir={remote_dir!r}: relative paths already start in the home "
                    "folder; drop the leading ~/")
  return remote_dir


def _parse_env(assignments: Sequence[str]) -> list[str]:
  parsed = []
  for assignment in assignments:
    name, sep, _ = assignment.partition("=")
    if not sep or not _ENV_NAME.match(name):
      raise UserError(f"--env {assignment!r}: expected NAME=VALUE")
    parsed.append(assignment)
  return parsed


def _check_xltransfer_command(command: Sequence[str]) -> list[str]:
  if not command:
    raise UserError("give the xltransfer command after `--`, e.g. "
                    "`-- train --gin_file=gin/runs/finetune.gin ...` or "
                    "`-- study run gin/study/xtreme_r_lowres_mt5_small.gin`")
  if command[0] not in command_line.COMMANDS:
    raise UserError(f"unknown xltransfer command {command[0]!r} after `--`; one of: "
                    f"{', '.join(command_line.COMMANDS)}")
  return list(command)


# ----------------------------------------------------------------------------- command builders


def _gcloud(*words: str, zone: str, project: Optional[str]) -> list[str]:
  """`gcloud compute tpus WORDS... --zone=Z [--project=P]`; WORDS end with the positionals."""
  argv = ["gcloud", "compute", "tpus", *words, f"--zone={zone}"]
  if project:
    argv.append(f"--project={project}")
  return argv


def remote_script(steps: Sequence[Sequence[str]]) -> str:
  """A shell string that runs argv `steps` one after another, stopping at the first failure."""
  return " && ".join(shlex.join(step) for step in steps)


def create_command(name, zone, accelerator_type, version=None, project=None, spot=False,
                   preemptible=False, reserved=False, network=None, subnetwork=None,
                   internal_ips=False, queued=False, valid_until_duration=None) -> list[str]:
  """`gcloud compute tpus tpu-vm create` (or `queued-resources create` with queued=True)."""
  accelerator = accelerators.parse_accelerator_type(accelerator_type)
  version = version or accelerator.default_runtime_version
  if spot and preemptible:
    raise UserError("choose one of --spot and --preemptible")
  if queued:
    if preemptible:
      raise UserError("queued resources take --spot, not --preemptible")
    argv = _gcloud("queued-resources", "create", name, zone=zone, project=project)
    argv += [f"--node-id={name}", f"--accelerator-type={accelerator.name}",
             f"--runtime-version={version}"]
  else:
    if valid_until_duration:
      raise UserError("--valid-until-duration applies to --queued requests only")
    argv = _gcloud("tpu-vm", "create", name, zone=zone, project=project)
    argv += [f"--accelerator-type={accelerator.name}", f"--version={version}"]
  if spot:
    argv.append("--spot")
  if preemptible:
    argv.append("--preemptible")
  if reserved:
    argv.append("--reserved")
  if network:
    argv.append(f"--network={network}")
  if subnetwork:
    argv.append(f"--subnetwork={subnetwork}")
  if internal_ips:
    argv.append("--internal-ips")
  if valid_until_duration:
    argv.append(f"--valid-until-duration={valid_until_duration}")
  return argv


def ssh_command(name, zone, worker, remote, project=None, internal_ip=False) -> list[str]:
  """`gcloud compute tpus tpu-vm ssh` running the shell string `remote` on `worker`."""
  argv = _gcloud("tpu-vm", "ssh", name, zone=zone, project=project)
  argv.append(f"--worker={worker}")
  if internal_ip:
    argv.append("--internal-ip")
  argv.append(f"--command={remote}")
  return argv


def archive_command(source_dir, archive) -> list[str]:
  """Local `tar` that packs the project checkout without build outputs and environments."""
  return (["tar", "-czf", str(archive)] + [f"--exclude={p}" for p in ARCHIVE_EXCLUDES] +
          ["-C", str(source_dir), "."])


def scp_command(name, zone, local_path, remote_path, project=None,
                internal_ip=False) -> list[str]:
  argv = _gcloud("tpu-vm", "scp", str(local_path), f"{name}:{remote_path}", zone=zone,
                 project=project)
  argv.append("--worker=all")
  if internal_ip:
    argv.append("--internal-ip")
  return argv


def install_python_steps(version: str) -> list[list[str]]:
  """Installs python{version} with venv from the deadsnakes PPA (TPU images ship 3.10)."""
  package = f"python{version}"
  return [
      ["sudo", "add-apt-repository", "--yes", "ppa:deadsnakes/ppa"],
      ["sudo", "apt-get", "update", "-q"],
      ["sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", package,
       f"{package}-venv"],
  ]


def setup_steps(remote_dir, python="python3", extras="tpu", git_url=None, git_ref="HEAD",
                clean=False, install_python=None) -> list[list[str]]:
  """The argv steps that put the project into `remote_dir` on a worker and install it."""
  steps = install_python_steps(install_python) if install_python else []
  if clean:
    steps.append(["rm", "-rf", remote_dir])
  steps.append(["mkdir", "-p", remote_dir])
  if git_url:
    # init + fetch + detached checkout works for a fresh or an existing clone, for a branch,
    # a tag or a commit, without a shell conditional.
    steps += [["git", "-C", remote_dir, "init", "--quiet"],
              ["git", "-C", remote_dir, "fetch", "--quiet", git_url, git_ref],
              ["git", "-C", remote_dir, "checkout", "--quiet", "--force", "--detach",
               "FETCH_HEAD"]]
  else:
    steps += [["tar", "-xzf", REMOTE_ARCHIVE, "-C", remote_dir], ["rm", "-f", REMOTE_ARCHIVE]]
  venv_python = f"{REMOTE_VENV}/bin/python"
  requirement = f".[{extras}]" if extras else "."
  steps += [["env", "-C", remote_dir, python, "-m", "venv", REMOTE_VENV],
            ["env", "-C", remote_dir, venv_python, "-m", "pip", "install", "-q", "--upgrade",
             "pip"],
            ["env", "-C", remote_dir, venv_python, "-m", "pip", "install", "-q", "-e",
             requirement]]
  return steps


def worker_argv(remote_dir, xltransfer_args, env=()) -> list[str]:
  """The argv each worker runs: the project's xltransfer in `remote_dir`, unbuffered output."""
  # PYTHONUNBUFFERED: without a terminal Python buffers stdout and logs would arrive in bursts.
  return (["env", "-C", remote_dir, "PYTHONUNBUFFERED=1", *env,
           f"{REMOTE_VENV}/bin/xltransfer"] + list(xltransfer_args))


def remote_log_path(run_name) -> str:
  return f"{REMOTE_LOG_DIR}/{run_name}.log"


def remote_pid_path(run_name) -> str:
  return f"{REMOTE_LOG_DIR}/{run_name}.pid"


def run_remote_command(argv, run_name, detach=False) -> str:
  """The remote shell string for `run`: records the pid (for `stop`), then runs `argv`.

  In the foreground the shell `exec`s the command, so the recorded pid is the trainer's and
  its output is the ssh session's. Detached, `nohup` keeps it running after ssh returns and
  its output goes to the worker's log file, which `logs` follows.
  """
  mkdir = shlex.join(["mkdir", "-p", REMOTE_LOG_DIR])
  pid_file = shlex.quote(remote_pid_path(run_name))
  if detach:
    log_file = shlex.quote(remote_log_path(run_name))
    return (f"{mkdir} && {{ nohup {shlex.join(argv)} > {log_file} 2>&1 < /dev/null & "
            f"echo $! > {pid_file}; }}")
  return f"{mkdir} && echo $$ > {pid_file} && exec {shlex.join(argv)}"


def logs_remote_command(run_name, follow=True) -> str:
  path = remote_log_path(run_name)
  return shlex.join(["tail", "-n", "+1", "-F", path] if follow else ["cat", path])


def stop_remote_command(run_name) -> str:
  pid_file = shlex.quote(remote_pid_path(run_name))
  return f"kill -TERM \"$(cat {pid_file})\""


# ----------------------------------------------------------------------------- argument parsing


def _common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("name", help="TPU VM (node) name, e.g. mt5-xxl-v4")
  parser.add_argument("--zone", help="zone of the TPU, e.g. us-central2-b (required)")
  parser.add_argument("--project", help="GCP project (default: gcloud's configured project)")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the exact commands and run nothing (anywhere before `--`)")


def _ssh_options(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--internal-ip", action="store_true",
                      help="ssh to the workers' internal IPs (from inside the VPC)")


def _worker_count_options(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--accelerator-type",
                      help="the slice's type, for its number of workers (default: ask gcloud)")
  parser.add_argument("--num-workers", type=int, help="number of TPU VM hosts in the slice")


def _log_options(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--log-dir", help="local folder for worker-N.log files "
                      "(default: launch_logs/NAME/RUN_NAME)")
  parser.add_argument("--console", choices=("all", "first", "none"), default="all",
                      help="which workers' output to echo with a [worker N] prefix")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

  create = sub.add_parser("create", help="create the TPU VM slice")
  _common(create)
  create.add_argument("--accelerator-type", required=True,
                      help="e.g. v4-128, v5litepod-256, v5p-128, v6e-64")
  create.add_argument("--version", help="TPU runtime version (default: the generation's "
                      "JAX image, e.g. tpu-ubuntu2204-base for v4)")
  capacity = create.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="Spot capacity")
  capacity.add_argument("--preemptible", action="store_true", help="preemptible capacity")
  create.add_argument("--reserved", action="store_true", help="use the project's reservation")
  create.add_argument("--network", help="VPC network")
  create.add_argument("--subnetwork", help="VPC subnetwork")
  create.add_argument("--internal-ips", action="store_true", help="no external IPs")
  create.add_argument("--queued", action="store_true",
                      help="request through queued resources (waits for capacity)")
  create.add_argument("--valid-until-duration",
                      help="with --queued: give up after this long, e.g. 6h")

  setup = sub.add_parser("setup", help="copy the project to every worker and pip install it")
  _common(setup)
  _ssh_options(setup)
  source = setup.add_mutually_exclusive_group()
  source.add_argument("--source-dir", help="local checkout to copy (default: this project)")
  source.add_argument("--git-url", help="clone this repository on the workers instead")
  setup.add_argument("--git-ref", default="HEAD", help="branch, tag or commit for --git-url")
  setup.add_argument("--archive", help="local path for the packed checkout "
                     "(default: a file in the temp folder)")
  setup.add_argument("--remote-dir", default="xltransfer",
                     help="project folder on the workers, relative to the home folder")
  setup.add_argument("--python", help="Python (>= 3.11) on the workers that creates the venv")
  setup.add_argument("--install-python", metavar="X.Y",
                     help="apt-install pythonX.Y first (TPU images ship 3.10)")
  setup.add_argument("--extras", default="tpu", help="pip extras to install")
  setup.add_argument("--clean", action="store_true", help="remove the remote folder first")

  run = sub.add_parser(
      "run", help="run `xltransfer ...` (given after --) on every worker",
      epilog="After the flags: -- COMMAND [ARGS...], the xltransfer command for every worker, "
      "e.g. `-- train --gin_file=gin/scale/mt5_xxl_finetune_v4-128.gin "
      "--gin.MODEL_DIR=\"'gs://b/x'\"` or `-- study run gin/study/xtreme_r_lowres_mt5_small.gin`. "
      "--dry-run after `--` belongs to that command: put the launcher's before `--`.")
  _common(run)
  _ssh_options(run)
  _worker_count_options(run)
  _log_options(run)
  run.add_argument("--run-name", help="names the logs (default: COMMAND-YYYYmmdd-HHMMSS)")
  run.add_argument("--remote-dir", default="xltransfer", help="project folder on the workers")
  run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for the command (repeatable)")
  run.add_argument("--detach", action="store_true",
                   help="start in the background on the workers; follow with `logs`")

  logs = sub.add_parser("logs", help="stream a detached run's log from every worker")
  _common(logs)
  _ssh_options(logs)
  _worker_count_options(logs)
  _log_options(logs)
  logs.add_argument("--run-name", required=True, help="the run's name as `run` printed it")
  logs.add_argument("--no-follow", action="store_true", help="print the logs so far and exit")

  stop = sub.add_parser("stop", help="stop a run on every worker")
  _common(stop)
  _ssh_options(stop)
  stop.add_argument("--run-name", required=True, help="the run's name as `run` printed it")

  status = sub.add_parser("status", help="describe the TPU VM (or the queued resource)")
  _common(status)
  status.add_argument("--queued", action="store_true", help="describe the queued resource")

  delete = sub.add_parser("delete", help="tear the slice down")
  _common(delete)
  delete.add_argument("--queued", action="store_true",
                      help="delete the queued resource and its TPU VM")
  return parser


# ----------------------------------------------------------------------------- actions


def _is_xltransfer_checkout(folder: pathlib.Path) -> bool:
  return (folder / "setup.py").is_file() and (folder / "xltransfer" / "__init__.py").is_file()


def source_checkout(cwd=None) -> pathlib.Path:
  """The checkout `setup` packs: the xltransfer checkout holding the working directory.

  The user edits and runs from that checkout; packing the one the running package was
  imported from (another clone, a site-packages install) would ship other code. Outside any
  checkout, the installed package's checkout (an editable install's) is the fallback.
  """
  here = pathlib.Path(cwd or pathlib.Path.cwd()).resolve()
  for folder in (here, *here.parents):
    if _is_xltransfer_checkout(folder):
      return folder
  installed = pathlib.Path(__file__).resolve().parents[2]
  if _is_xltransfer_checkout(installed):
    return installed
  raise UserError(f"cannot find an xltransfer checkout (a folder with setup.py and "
                  f"xltransfer/) holding {here} or the installed package; pass --source-dir")


def _num_workers(args) -> int:
  if args.num_workers is not None:
    if args.num_workers < 1:
      raise UserError(f"--num-workers={args.num_workers} must be at least 1")
    return args.num_workers
  if args.accelerator_type:
    return accelerators.parse_accelerator_type(args.accelerator_type).num_hosts
  if args.dry_run:
    raise UserError("--dry-run needs --accelerator-type or --num-workers to list the "
                    "per-worker commands")
  commands.require_executable("gcloud", GCLOUD_HINT)
  describe = _gcloud("tpu-vm", "describe", args.name, zone=args.zone, project=args.project)
  describe.append("--format=value(acceleratorType)")
  found = commands.run_capture(describe).strip()
  return accelerators.parse_accelerator_type(found).num_hosts


def _default_run_name(xltransfer_args) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return f"{xltransfer_args[0]}-{stamp}"


def _console_workers(choice: str):
  """Workers echoed to the console: None means all of them."""
  return {"all": None, "first": [0], "none": []}[choice]


def _execute(plan: Sequence[Sequence[str]], dry_run: bool) -> int:
  if dry_run:
    commands.print_commands(plan)
    return 0
  commands.require_executable("gcloud", GCLOUD_HINT)
  for argv in plan:
    commands.run_checked(argv)
  return 0


def _stream(args, per_worker: dict, log_dir: pathlib.Path, what: str) -> int:
  if args.dry_run:
    commands.print_commands([per_worker[w] for w in sorted(per_worker)])
    return 0
  commands.require_executable("gcloud", GCLOUD_HINT)
  print(f"{what} on {len(per_worker)} worker(s); logs in {log_dir}/", file=sys.stderr)
  results = streaming.stream_workers(
      per_worker, log_dir=log_dir,
      console_workers=_console_workers(args.console))
  failed = [r for r in results if r.returncode != 0]
  if failed:
    details = ", ".join(f"worker {r.worker} (exit {r.returncode}, {r.log_path})" for r in failed)
    raise UserError(f"{len(failed)} of {len(results)} worker(s) failed: {details}")
  return 0


def _create(args) -> int:
  plan = [create_command(
      args.name, args.zone, args.accelerator_type, version=args.version, project=args.project,
      spot=args.spot, preemptible=args.preemptible, reserved=args.reserved,
      network=args.network, subnetwork=args.subnetwork, internal_ips=args.internal_ips,
      queued=args.queued, valid_until_duration=args.valid_until_duration)]
  return _execute(plan, args.dry_run)


def _setup(args) -> int:
  if args.git_ref != "HEAD" and not args.git_url:
    raise UserError("--git-ref needs --git-url")
  if args.install_python and not _PYTHON_VERSION.match(args.install_python):
    raise UserError(f"--install-python={args.install_python!r}: expected a version like 3.11")
  python = args.python or (f"python{args.install_python}" if args.install_python
                           else "python3")
  remote = remote_script(setup_steps(
      _check_remote_dir(args.remote_dir), python=python, extras=args.extras,
      git_url=args.git_url, git_ref=args.git_ref, clean=args.clean,
      install_python=args.install_python))
  plan = []
  if not args.git_url:
    source_dir = pathlib.Path(args.source_dir) if args.source_dir else source_checkout()
    if not (source_dir / "setup.py").is_file():
      raise UserError(f"--source-dir={str(source_dir)!r} has no setup.py")
    print(f"packing {source_dir}", file=sys.stderr, flush=True)
    archive = args.archive or str(pathlib.Path(tempfile.gettempdir()) /
                                  f"xltransfer-{args.name}-src.tar.gz")
    plan += [archive_command(source_dir, archive),
             scp_command(args.name, args.zone, archive, REMOTE_ARCHIVE, project=args.project,
                         internal_ip=args.internal_ip)]
  plan.append(ssh_command(args.name, args.zone, "all", remote, project=args.project,
                          internal_ip=args.internal_ip))
  if not args.dry_run and not args.git_url:
    commands.require_executable("tar", "Install GNU tar or bsdtar.")
  return _execute(plan, args.dry_run)


def _per_worker_ssh(args, remote: str, num_workers: int) -> dict:
  return {w: ssh_command(args.name, args.zone, w, remote, project=args.project,
                         internal_ip=args.internal_ip) for w in range(num_workers)}


def _local_log_dir(args, run_name: str) -> pathlib.Path:
  return pathlib.Path(args.log_dir or pathlib.Path("launch_logs") / args.name / run_name)


def _run(args, xltransfer_args) -> int:
  xltransfer_args = _check_xltransfer_command(xltransfer_args)
  commands.check_command_dry_run(xltransfer_args, args.dry_run,
                                 "run it on every worker of the slice")
  commands.warn_missing_gin_files(xltransfer_args)
  run_name = _check_run_name(args.run_name or _default_run_name(xltransfer_args))
  argv = worker_argv(_check_remote_dir(args.remote_dir), xltransfer_args, _parse_env(args.env))
  num_workers = _num_workers(args)
  commands.refuse_study_run_on_several_hosts(xltransfer_args, num_workers, "workers")
  remote = run_remote_command(argv, run_name, detach=args.detach)
  if not args.detach:
    return _stream(args, _per_worker_ssh(args, remote, num_workers),
                   _local_log_dir(args, run_name), f"running {run_name!r}")
  _execute([ssh_command(args.name, args.zone, "all", remote, project=args.project,
                        internal_ip=args.internal_ip)], args.dry_run)
  if not args.dry_run:
    print(f"started {run_name!r} on {num_workers} worker(s); follow it with:\n  "
          f"python -m xltransfer.launch.tpu logs {args.name} --zone={args.zone} "
          f"--num-workers={num_workers} --run-name={run_name}", file=sys.stderr)
  return 0


def _logs(args) -> int:
  run_name = _check_run_name(args.run_name)
  remote = logs_remote_command(run_name, follow=not args.no_follow)
  return _stream(args, _per_worker_ssh(args, remote, _num_workers(args)),
                 _local_log_dir(args, run_name), f"streaming logs of {run_name!r}")


def _stop(args) -> int:
  remote = stop_remote_command(_check_run_name(args.run_name))
  return _execute([ssh_command(args.name, args.zone, "all", remote, project=args.project,
                               internal_ip=args.internal_ip)], args.dry_run)


def _status(args) -> int:
  group = "queued-resources" if args.queued else "tpu-vm"
  return _execute([_gcloud(group, "describe", args.name, zone=args.zone, project=args.project)],
                  args.dry_run)


def _delete(args) -> int:
  if args.queued:
    # --force also deletes the TPU VM that the request created.
    argv = _gcloud("queued-resources", "delete", args.name, zone=args.zone,
                   project=args.project) + ["--force", "--quiet"]
  else:
    argv = _gcloud("tpu-vm", "delete", args.name, zone=args.zone,
                   project=args.project) + ["--quiet"]
  return _execute([argv], args.dry_run)


_ACTIONS = {"create": _create, "setup": _setup, "logs": _logs, "stop": _stop,
            "status": _status, "delete": _delete}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  own_args, xltransfer_args = commands.split_at_double_dash(argv)
  own_args, dry_run = commands.take_dry_run(own_args)
  args = build_parser().parse_args(own_args)
  args.dry_run = args.dry_run or dry_run
  if xltransfer_args and args.action != "run":
    raise UserError(f"`{args.action}` takes no command after `--`")
  _check_name(args.name)
  _check_zone(args.zone)
  if args.action == "run":
    return _run(args, xltransfer_args)
  return _ACTIONS[args.action](args)


if __name__ == "__main__":
  sys.exit(command_line.run_command(main, PROG))
