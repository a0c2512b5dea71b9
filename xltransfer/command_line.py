"""The command line's conventions: the table of `xltransfer` commands and how one runs.

Each command is the module `xltransfer.commands.<name>` with `main(argv) -> int`, parsing its
own flags (`xltransfer NAME` and `python -m xltransfer NAME` run it); the table lists them without importing any (`xltransfer score` must not pay for
importing tensorflow), so the dispatcher (cli.py) and the launchers, which check the command
they are asked to run remotely, can read it from any layer. `run_command` is the one place a
UserError becomes one line on stderr and exit status 2.
"""
import os
import sys
from typing import Callable, Optional, Sequence

from xltransfer import errors

COMMANDS = {
    "train": "train a model from gin configs (T5X-style macros)",
    "eval": "zero-shot evaluation of a checkpoint on eval tasks",
    "score": "score prediction files against labels like the official XTREME-R scorer",
    "convert": "convert checkpoints between HF, T5X and xltransfer formats",
    "tasks": "list and inspect registered seqio tasks and mixtures",
    "study": "run, inspect and report an intermediate-task study",
    "plan": "compile a gin config for a topology and report per-device memory",
    "launch": "Cloud TPU VM slices and SLURM GPU clusters: create, set up, run, tear down",
    "demo": "run the built-in quickstart on a tiny model and bundled sample data",
}
# Exit status of a command stopped by an error the user can fix (argparse's too).
USAGE_ERROR = 2


def command_module(name: str) -> str:
  """The module that implements `xltransfer NAME`."""
  return f"xltransfer.commands.{name}"


def run_command(main: Callable[[Sequence[str]], Optional[int]], prog: str,
                argv: Optional[Sequence[str]] = None) -> int:
  """Runs a command's `main`: its exit status, with a UserError as one line on stderr.

  gin's "In call to configurable" note is dropped from the message (it already names the file,
  key or path to fix). Ctrl-C exits 130; a closed stdout (`... | head`) stops quietly.
  """
  try:
    return int(main(list(sys.argv[1:] if argv is None else argv)) or 0)
  except errors.UserError as error:
    print(f"{prog}: error: {errors.one_line_message(error)}", file=sys.stderr)
    return USAGE_ERROR
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except BrokenPipeError:
    # Keep Python's exit flush from failing again on the closed pipe.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
