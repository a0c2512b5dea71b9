"""The `xltransfer` command: dispatches `xltransfer COMMAND ...` to the module that owns it.

Each command module (`xltransfer.commands.NAME`, listed in command_line.COMMANDS) exposes
`main(argv: list[str]) -> int` and parses its own flags, so gin-style flags
(`--gin_file=F --gin.NAME=VALUE`) work the same way in every command. Modules are imported
lazily: `xltransfer score` must not pay for importing tensorflow. Run as the program, it
quiets the libraries' start-up logs first (library_logs.py); `-v` or XLTRANSFER_VERBOSE=1
keeps them.
"""
import importlib
import os
import sys

from xltransfer import command_line
from xltransfer import host_memory
from xltransfer import library_logs

VERBOSE_FLAGS = ("-v", "--verbose")


def _usage() -> str:
  lines = ["usage: xltransfer [-v] COMMAND [ARGS...]", "", "commands:"]
  width = max(len(name) for name in command_line.COMMANDS)
  for name, summary in command_line.COMMANDS.items():
    lines.append(f"  {name.ljust(width)}  {summary}")
  lines.append("")
  lines.append("`xltransfer COMMAND --help` describes each command.")
  lines.append("")
  lines.append("-v, --verbose  also print the libraries' logs (TensorFlow, XLA and libtpu start-up")
  lines.append("               lines; absl, jax, orbax INFO), hidden by default; or set "
               f"{library_logs.VERBOSE_ENV}=1")
  return "\n".join(lines)


def main(argv=None) -> int:
  if argv is None:  # run as the program (not called from Python): tune this process's malloc
    host_memory.restart_with_tuned_malloc()
  run_as_program = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = bool(argv) and argv[0] in VERBOSE_FLAGS
  argv = argv[1:] if verbose else argv
  if run_as_program:  # before any command imports tensorflow or jax
    if verbose:  # for its subprocesses (plan's compile worker, study stages) too
      os.environ[library_logs.VERBOSE_ENV] = "1"
      print(f"xltransfer: {host_memory.describe()}", file=sys.stderr)
    library_logs.quiet()
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in command_line.COMMANDS:
    print(f"xltransfer: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return command_line.USAGE_ERROR
  module = importlib.import_module(command_line.command_module(name))
  return command_line.run_command(module.main, f"xltransfer {name}", rest)


if __name__ == "__main__":
  sys.exit(main())
