"""Commands as argv lists: display them, check their executable, run them.

Launchers never hand a local shell a command string; each command is a list of arguments
passed to `subprocess` as is, and shown to the user with `shlex.join` so that the printed line
is the exact command (copy-pasteable into a POSIX shell).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Sequence

from xltransfer.errors import UserError


def display(argv: Sequence[str]) -> str:
  """The shell-quoted form of an argv list, for printing."""
  return shlex.join(argv)


def print_commands(commands: Sequence[Sequence[str]], stream=None) -> None:
  """Prints one command per line, as `--dry-run` shows them."""
  stream = stream or sys.stdout
  for argv in commands:
    print(display(argv), file=stream)
  stream.flush()


def require_executable(name: str, hint: str) -> str:
  """The full path of `name` on PATH, or a UserError that says how to get it."""
  path = shutil.which(name)
  if path is None:
    raise UserError(f"`{name}` was not found on PATH. {hint} "
                    "(--dry-run prints the commands without running them.)")
  return path


def run_checked(argv: Sequence[str], echo: bool = True) -> None:
  """Runs one command, output straight to the console; a failure is a UserError."""
  if echo:
    print(f"+ {display(argv)}", file=sys.stderr, flush=True)
  try:
    completed = subprocess.run(list(argv), check=False)
  except FileNotFoundError as e:
    raise UserError(f"cannot run {argv[0]!r}: {e.strerror}") from None
  if completed.returncode != 0:
    raise UserError(f"command failed with exit status {completed.returncode}: {display(argv)}")


def run_capture(argv: Sequence[str]) -> str:
  """Runs one command and returns its stdout; a failure is a UserError that shows stderr."""
  try:
    completed = subprocess.run(list(argv), check=False, capture_output=True, text=True)
  except FileNotFoundError as e:
    raise UserError(f"cannot run {argv[0]!r}: {e.strerror}") from None
  if completed.returncode != 0:
    raise UserError(f"command failed with exit status {completed.returncode}: {display(argv)}\n"
                    f"{completed.stderr.strip()}")
  return completed.stdout


# The launcher's own dry-run flag in both spellings (the xltransfer commands use `--dry_run`).
DRY_RUN_FLAGS = ("--dry-run", "--dry_run")
# What a command after `--` might mean as a dry run, abbreviations and `=VALUE` forms included.
_DRY_RUN_LIKE = re.compile(r"^--dry([-_]?(r(u(n)?)?)?)?(=.*)?$")


def take_dry_run(own_args: Sequence[str]) -> tuple[list[str], bool]:
  """Removes the launcher's `--dry-run`/`--dry_run` from its flags, wherever they stand.

  Any position before `--` counts, before the action too (`tpu --dry-run run NAME`), which
  argparse's sub-parsers alone would reject or, worse, attach to the wrong parser.
  """
  kept = [arg for arg in own_args if arg not in DRY_RUN_FLAGS]
  return kept, len(kept) != len(own_args)


def dry_run_flags_in_command(command: Sequence[str]) -> list[str]:
  """The dry-run-looking flags in the xltransfer command after `--` (they are not ours)."""
  return [arg for arg in command if _DRY_RUN_LIKE.match(arg)]


def check_command_dry_run(command: Sequence[str], launcher_dry_run: bool, what: str) -> None:
  """A dry-run flag after `--` goes to the xltransfer command, not to the launcher.

  Without a launcher `--dry-run` that would start the real thing (ssh to every worker, a
  submitted job) while the user believes nothing runs, so it is refused; with one, a note
  says whose flag it is.
  """
  flags = dry_run_flags_in_command(command)
  if not flags:
    return
  name = f"`xltransfer {command[0]}`" if command else "the xltransfer command"
  if not launcher_dry_run:
    raise UserError(
        f"{flags[0]} comes after `--`, so it would go to {name} and the launcher would "
        f"{what} for real; nothing was run. To print the launcher's commands without running "
        f"them, put --dry-run before `--` (to see a study's stages, run `xltransfer study run "
        f"SPEC --dry_run` locally).")
  print(f"note: {flags[0]} after `--` is passed to {name} itself; the launcher dry-runs "
        "because of the --dry-run before `--`.", file=sys.stderr, flush=True)


def refuse_study_run_on_several_hosts(command: Sequence[str], processes: int, where: str) -> None:
  """`study run` drives a study from one host; started on several it cannot work.

  Its runner keeps the study's state on the host it runs on (stage markers, and with local
  stage directories the checkpoints and DONE files, which only process 0 of a multi-host stage
  writes) and holds a lock on the study directory. Started on every worker of a slice, the
  copies diverge after the first stage (a shared directory refuses all but one); a stage then
  waits for hosts that have moved on. On several hosts the stages run from an emitted script.
  """
  if processes <= 1 or list(command[:2]) != ["study", "run"]:
    return
  if any(arg == "--emit" or arg.startswith("--emit=") for arg in command):
    return
  spec = shlex.quote(next((arg for arg in command[2:] if not arg.startswith("-")), "SPEC"))
  raise UserError(
      f"`study run` would run on {processes} {where} at once; it drives a study from one host "
      "(each copy would keep its own stage state, and only process 0 of a multi-host stage "
      "writes DONE), so nothing was started. For several hosts, write the stages with a shared "
      f"output directory: `xltransfer study run {spec} --emit DIR "
      "--gin.output_dir='\"gs://BUCKET/studies/NAME\"'`, copy DIR to the same path on every "
      "host, and run DIR/run_stages.sh on every host (launch/README.md, \"A study on several "
      "hosts\"). One host (e.g. a v4-8, or --nodes=1) runs `study run` as it is.")


_GIN_FILE_FLAGS = ("--gin_file", "--mesh_file")


def gin_files_in_command(command: Sequence[str]) -> list[str]:
  """The gin files an xltransfer command names: --gin_file/--mesh_file values, a study spec."""
  found = []
  for i, arg in enumerate(command):
    flag, sep, value = arg.partition("=")
    if flag in _GIN_FILE_FLAGS:
      if sep:
        found.append(value)
      elif i + 1 < len(command):
        found.append(command[i + 1])
    elif arg.endswith(".gin") and not arg.startswith("-") and (
        i == 0 or command[i - 1] not in _GIN_FILE_FLAGS):
      found.append(arg)  # a positional spec, as in `study run gin/study/x.gin`
  return found


def warn_missing_gin_files(command: Sequence[str], stream=None) -> list[str]:
  """Warns about each gin file of `command` that this checkout does not have.

  The workers run the checkout `setup` copied from here, so a file missing here would fail
  there, after the slice or the job has started. Paths on remote storage are not checked.
  """
  from xltransfer import gin_utils  # pylint: disable=import-outside-toplevel
  search = [v.partition("=")[2] for v in command if v.startswith("--gin_search_paths=")]
  missing = [path for path in gin_files_in_command(command)
             if "://" not in path and not os.path.isabs(path)
             and not gin_utils.exists(path, search)]
  for path in missing:
    print(f"warning: gin file {path} is not in this checkout (nor under "
          f"{gin_utils.config_dir()}); the command will fail on the workers",
          file=stream or sys.stderr, flush=True)
  return missing


def split_at_double_dash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `LAUNCHER_FLAGS -- COMMAND...`; the command part never reaches argparse."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  index = argv.index("--")
  return argv[:index], argv[index + 1:]
