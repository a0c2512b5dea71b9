"""The `xltransfer` command: dispatches `xltransfer COMMAND ...` to the module that owns it.

Each command module exposes `main(argv: list[str]) -> int` and parses its own flags, so that
gin-style flags (`--gin_file=F --gin.NAME=VALUE`) work exactly as with `python -m MODULE`.
Modules are imported lazily: `xltransfer score` must not pay for importing tensorflow.
"""
import importlib
import sys

from xltransfer import host_memory
from xltransfer.errors import UserError

COMMANDS = {
    "train": ("xltransfer.train.main", "train a model from gin configs (T5X-style macros)"),
    "eval": ("xltransfer.evaluation.eval_main", "zero-shot evaluation of a checkpoint on eval tasks"),
    "score": ("xltransfer.evaluation.score_main", "score prediction files against labels like the official XTREME-R scorer"),
    "convert": ("xltransfer.checkpoints.convert_main", "convert checkpoints between HF, T5X and xltransfer formats"),
    "tasks": ("xltransfer.tasks.cli", "list and inspect registered seqio tasks and mixtures"),
    "study": ("xltransfer.study.main", "run, inspect and report an intermediate-task study"),
    "plan": ("xltransfer.plan", "compile a gin config for a topology and report per-device memory"),
    "launch": ("xltransfer.launch.main", "Cloud TPU VM slices and SLURM GPU clusters: create, set up, run, tear down"),
    "demo": ("xltransfer.demo", "run the built-in quickstart on a tiny model and bundled sample data"),
}


def _usage() -> str:
  lines = ["usage: xltransfer COMMAND [ARGS...]", "", "commands:"]
  width = max(len(name) for name in COMMANDS)
  for name, (_, summary) in COMMANDS.items():
    lines.append(f"  {name.ljust(width)}  {summary}")
  lines.append("")
  lines.append("`xltransfer COMMAND --help` describes each command.")
  return "\n".join(lines)


def main(argv=None) -> int:
  if argv is None:  # run as the program (not called from Python): tune this process's malloc
    host_memory.restart_with_hugepage_malloc()
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"xltransfer: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(COMMANDS[name][0])
  try:
    return int(module.main(rest) or 0)
  except UserError as e:
    print(f"xltransfer {name}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
