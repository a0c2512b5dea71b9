"""`xltransfer launch tpu|slurm ...`: the launchers under one CLI command."""
import sys
from typing import Optional, Sequence

LAUNCHERS = {
    "tpu": ("xltransfer.launch.tpu", "Cloud TPU VM slices through gcloud"),
    "slurm": ("xltransfer.launch.slurm", "GPU clusters through SLURM's sbatch/srun"),
}


def _usage() -> str:
  lines = ["usage: xltransfer launch LAUNCHER ACTION [ARGS...]", "", "launchers:"]
  lines += [f"  {name:6s} {summary}" for name, (_, summary) in LAUNCHERS.items()]
  lines.append("\n`xltransfer launch LAUNCHER --help` lists its actions.")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  import importlib
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  if argv[0] not in LAUNCHERS:
    print(f"xltransfer launch: unknown launcher {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(LAUNCHERS[argv[0]][0])
  return module.main(argv[1:])
