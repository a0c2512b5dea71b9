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
one line and exit 2 (command_line.run_command).
"""
import argparse
import logging
import sys
from typing import Optional, Sequence

import gin

from xltransfer import gin_utils
from xltransfer import registered_names
from xltransfer.errors import ConfigError
from xltransfer.train import termination

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
  gin_utils.add_module_flag(parser)
  parser.add_argument("--run_mode", choices=("train", "eval"), default="train",
                      help="train (xltransfer.train.train) or teacher-forced evaluation "
                           "(xltransfer.train.evaluate)")
  parser.add_argument("--coordinator_address", default=None,
                      help="multi-host: host:port of process 0 (else XLTRANSFER_COORDINATOR_"
                           "ADDRESS; automatic on Cloud TPU)")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--check_devices", action="store_true",
                      help="only check that the config's mesh (and BATCH_SIZE) can be laid out "
                           "on the devices present, as the run's start would; print it, exit")
  parser.add_argument("--log_level", default="INFO")
  return parser


def _batch_size():
  """The BATCH_SIZE macro, if the config defines it as a number."""
  try:
    value = gin.query_parameter("%BATCH_SIZE")
  except ValueError:
    return None
  return value if isinstance(value, int) else None


def _registration_modules():
  """The modules whose configurables a training config names (tasks: optional)."""
  return (["xltransfer.partitioning", "xltransfer.model.factory", "xltransfer.train.run",
           "xltransfer.train.evaluate"], ["xltransfer.tasks"])


def _task_names() -> list:
  """The MIXTURE_OR_TASK_NAME macro's name, if the config uses the macro."""
  try:
    name = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  except ValueError:
    return []
  return [name] if isinstance(name, str) else []


def main(argv: Optional[Sequence[str]] = None) -> int:
  # Before anything slow (jax, gin, the data): a SIGTERM during start-up is then a clean stop.
  installed_here = termination.install()
  try:
    return _main(argv)
  finally:
    if installed_here:
      termination.REQUEST.uninstall()


def _main(argv: Optional[Sequence[str]]) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, cli_bindings = gin_utils.split_gin_flags(argv)
  args = _parser().parse_args(rest)
  logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                      format="%(asctime)s %(levelname)s %(message)s", force=True)
  if logging.getLogger().level > logging.DEBUG:
    # orbax and jax log every file they write through absl at INFO; keep the run's log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
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
                                      args.process_id,
                                      preemption_sync=args.run_mode == "train")
  configurables, tasks = _registration_modules()
  gin_utils.import_modules(configurables)
  gin_utils.defer_modules(tasks)  # seqio and TensorFlow: after the config is known to be good
  gin.clear_config()
  gin_utils.parse_config(args.gin_file, list(args.gin_bindings) + cli_bindings,
                         args.gin_search_paths, args.module)
  registered_names.check(_task_names(), "MIXTURE_OR_TASK_NAME")  # before TensorFlow loads
  if args.check_devices:
    print(f"xltransfer train --check_devices: {partitioning.check_devices(_batch_size())}")
    return 0
  gin_utils.import_modules([], tasks)
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
