"""`xltransfer train`: run a training (or teacher-forced evaluation) job from gin files.

  xltransfer train --gin_file=models/mt5_small.gin --gin_file=runs/finetune.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'xlt_xnli_train'" ...

Gin files are looked up as given, then under any --gin_search_paths and the bundled configs
(the checkout's gin/, or the copy installed with the package, so `models/mt5_small.gin` and
`gin/models/mt5_small.gin` work from any directory). Values of --gin.NAME=VALUE are gin
literals (quote strings). The config is checked before anything expensive happens: an
unknown configurable or parameter fails with gin's message and the file and line; a required
macro left unset, a macro used but never defined, and a macro defined but used nowhere (a
typo such as TRAIN_STEP) fail with the macro name and the file that mentions it.

SIGTERM is caught from the first line on (`termination.py`): during start-up the run stops
before its first step, with nothing to save, and exits 0. Errors the user can fix print as
one line (gin's "In call to configurable" note removed) and exit 2.
"""
import argparse
import difflib
import logging
import os
import re
import shlex
import sys
from typing import Optional, Sequence

import gin

from xltransfer import gin_paths
from xltransfer import errors
from xltransfer.errors import ConfigError, UserError
from xltransfer.train import termination

T5X_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
              "BATCH_SIZE", "INITIAL_CHECKPOINT_PATH", "DROPOUT_RATE", "LEARNING_RATE",
              "EVAL_PERIOD", "LOSS_NORMALIZING_FACTOR")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="xltransfer train", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable; later files override earlier ones)")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding such as 'train.log_period = 10' (repeatable)")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="extra directories (comma-separated) to find gin files and includes")
  parser.add_argument("--run_mode", choices=("train", "eval"), default="train",
                      help="train (xltransfer.train.train) or teacher-forced evaluation "
                           "(xltransfer.train.evaluate)")
  parser.add_argument("--coordinator_address", default=None,
                      help="multi-host: host:port of process 0 (else XLTRANSFER_COORDINATOR_"
                           "ADDRESS; automatic on Cloud TPU)")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--log_level", default="INFO")
  return parser


def split_gin_flags(argv: Sequence[str]):
  """Pulls `--gin.NAME=VALUE` (T5X's syntax) out of argv: (other arguments, gin bindings).

  Every command that reads a training config (train, eval, plan) splits its flags with this,
  so `--gin.` means the same everywhere.
  """
  rest, bindings = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--gin.") and not arg.startswith("--gin.-"):
      name_value = arg[len("--gin."):]
      if "=" not in name_value:
        if i + 1 >= len(args):
          raise ConfigError(f"{arg}: expected --gin.NAME=VALUE")
        name_value = f"{name_value}={args[i + 1]}"
        i += 1
      name, value = name_value.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def _where(pattern: str, files: Sequence[str], bindings: Sequence[str]) -> str:
  """'FILE:LINE' (or the command-line binding) of the first line matching `pattern`."""
  regex = re.compile(pattern)
  for binding in bindings:
    if regex.search(binding):
      return f"command-line binding `{binding}`"
  for path in files:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if regex.search(line.split("#", 1)[0]):
          return f"{path}:{number}"
  return "the gin config"


def _macro_names_used_and_defined():
  config = gin.config._CONFIG  # pylint: disable=protected-access
  defined, used = set(), set()

  def walk(value):
    if isinstance(value, gin.config.ConfigurableReference):
      selector = value.scoped_selector
      if selector.endswith("gin.macro"):
        used.add(selector.split("/")[0])
    elif isinstance(value, (list, tuple, set)):
      for item in value:
        walk(item)
    elif isinstance(value, dict):
      for key, item in value.items():
        walk(key)
        walk(item)

  for (scope, selector), parameters in config.items():
    if selector == "gin.macro":
      defined.add(scope)
    for value in parameters.values():
      walk(value)
  return defined, used


def _unparsable_binding(error: Exception, bindings: Sequence[str]) -> Optional[str]:
  """For a command-line binding gin cannot parse: a message naming it, with the quoted form.

  gin reports such a value as "Unable to parse value. (line 1)" without the binding; the
  usual cause is a string without gin's own quotes (the shell ate the ones typed).
  """
  line = getattr(error, "text", None)
  if not isinstance(error, SyntaxError) or getattr(error, "filename", None) or not line:
    return None  # a gin file's error already names the file and line
  line = line.strip()
  if line not in (b.strip() for b in bindings) or "=" not in line:
    return None
  name, value = (part.strip() for part in line.split("=", 1))
  quoted = repr(value.strip("'\""))
  shell = (f"--gin.{name}=\"{quoted}\"" if not any(c in quoted for c in '"$`\\')
           else shlex.quote(f"--gin.{name}={quoted}"))
  reason = str(error.msg).splitlines()[0]
  return (f"binding `{line}`: {value!r} is not a gin value ({reason}); a string needs gin's "
          f"quotes inside the shell's, e.g. {shell} (in a gin file or --gin_bindings: "
          f"{name} = {quoted})")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]):
  """Parses the config; every mistake becomes a ConfigError that names the file."""
  search = gin_paths.search_paths(search_paths)
  for path in search:
    gin.add_config_file_search_path(path)
  files = [gin_paths.resolve(f, search) for f in gin_files]
  if not files:
    raise ConfigError("no --gin_file given; e.g. --gin_file=models/mt5_small.gin "
                      "--gin_file=runs/finetune.gin")
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)
  except (ValueError, IOError, ImportError, SyntaxError) as e:
    message = str(e)
    required = re.search(r"(\w+)/macro\.value set to `%gin\.REQUIRED`", message)
    undefined = re.search(r"No bindings specified for '(\w+)/gin\.macro'", message)
    if required:
      name = required.group(1)
      where = _where(r"^\s*" + name + r"\s*=", files, bindings)
      defined, used = _macro_names_used_and_defined()
      typos = difflib.get_close_matches(name, sorted(defined - used), n=3)
      hint = (f" ({', '.join(typos)} is set but used by nothing: a typo?)" if typos else "")
      raise ConfigError(
          f"required macro {name} is not set (declared %gin.REQUIRED at {where}); pass "
          f"--gin.{name}=VALUE or bind it in a gin file{hint}") from e
    unquoted = _unparsable_binding(e, bindings)
    if unquoted:
      raise ConfigError(unquoted) from e
    if undefined:
      name = undefined.group(1)
      defined, _ = _macro_names_used_and_defined()
      close = difflib.get_close_matches(name, sorted(defined | set(T5X_MACROS)), n=3)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      where = _where("%" + name + r"\b", files, bindings)
      raise ConfigError(f"macro %{name} is used at {where} but never defined{hint}") from e
    raise ConfigError(f"gin config error: {message}") from e
  defined, used = _macro_names_used_and_defined()
  unused = sorted(defined - used)
  if unused:
    problems = []
    for name in unused:
      close = difflib.get_close_matches(name, sorted((used | set(T5X_MACROS)) - {name}), n=3)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      where = _where(r"^\s*" + name + r"\s*=", files, bindings)
      problems.append(f"{name} at {where}{hint}")
    raise ConfigError("macro defined but used by nothing (a typo?): " + "; ".join(problems))
  return files


def _import_registrations():
  """Registers the configurables and the project's seqio tasks before gin is parsed."""
  # pylint: disable=import-outside-toplevel,unused-import
  import xltransfer.partitioning
  import xltransfer.train.model_factory
  import xltransfer.train.run
  import xltransfer.train.evaluate
  try:
    import xltransfer.tasks
  except ImportError as e:
    logging.warning("xltransfer.tasks could not be imported (%s); only tasks registered by "
                    "gin `import` lines are available", e)


def _drop_gin_include_probe(record: logging.LogRecord) -> bool:
  return not (record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
              and record.getMessage().startswith("Path not found"))


def main(argv: Optional[Sequence[str]] = None) -> int:
  # Before anything slow (jax, gin, the data): a SIGTERM during start-up is then a clean stop.
  installed_here = termination.install()
  try:
    return _main(argv)
  except UserError as error:
    message = errors.one_line_message(error)
    print(f"xltransfer train: error: {message}", file=sys.stderr)
    return 2
  finally:
    if installed_here:
      termination.REQUEST.uninstall()


def _main(argv: Optional[Sequence[str]]) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, cli_bindings = split_gin_flags(argv)
  args = _parser().parse_args(rest)
  logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                      format="%(asctime)s %(levelname)s %(message)s", force=True)
  if logging.getLogger().level > logging.DEBUG:
    # orbax and jax log every file they write through absl at INFO; keep the run's log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
  # gin probes each include as a Python package path before its search paths and logs the
  # miss as an ERROR although the file is then found; that line would only alarm users.
  for handler in logging.getLogger().handlers:
    handler.addFilter(_drop_gin_include_probe)
  if args.run_mode != "train":
    # Only the training loop checks the flag; an evaluation stops on SIGTERM as usual.
    if termination.requested():
      logging.warning("stopping on SIGTERM before the %s started: nothing to save",
                      args.run_mode)
      return 0
    termination.REQUEST.uninstall()
  from xltransfer import partitioning  # pylint: disable=import-outside-toplevel
  # Multi-host set-up must precede any jax computation, including in registrations.
  partitioning.initialize_distributed(args.coordinator_address, args.num_processes,
                                      args.process_id)
  _import_registrations()
  gin.clear_config()
  parse_gin(args.gin_file, list(args.gin_bindings) + cli_bindings, args.gin_search_paths)
  from xltransfer.train import evaluate, run  # pylint: disable=import-outside-toplevel
  entry = run.train if args.run_mode == "train" else evaluate.evaluate
  try:
    result = entry()
  except ValueError as e:
    if "Required bindings" in str(e) or "gin" in str(e).lower():
      raise ConfigError(f"gin config error: {e}") from e
    raise
  logging.info("%s finished: %s", args.run_mode, {k: v for k, v in result.items()
                                                   if k != "metrics"})
  return 0


if __name__ == "__main__":
  from xltransfer.errors import UserError  # pylint: disable=ungrouped-imports
  try:
    sys.exit(main())
  except UserError as error:
    print(f"xltransfer train: error: {error}", file=sys.stderr)
    sys.exit(2)
