"""`xltransfer demo`: the quickstart study on a tiny model and bundled sample data.

  xltransfer demo [--gin.FIELD=VALUE ...]

Runs gin/study/demo_tiny.gin end to end: copies the bundled sample data (XTREME-R download
layout, English, German and Swahili) to the spec's XTREME data dir, creates the spec's tiny
randomly initialised checkpoint if it is absent, runs every stage (baseline, English
intermediate, Swahili intermediate -> English fine-tuning -> zero-shot eval), then prints the
report table and the paths of the plots. Paths in the spec are relative to the current
directory (demo_output/ by default). Rerunning resumes: finished stages are skipped.
`--gin.FIELD=VALUE` overrides a StudySpec field as in `xltransfer study run`.

The numbers show the pipeline working, not the scientific answer: the model is tiny and
starts from random weights, and the data are a few hundred synthetic sentences.
"""
import os
import shutil
import subprocess
import sys
import time

from xltransfer import gin_utils
from xltransfer.commands import study as study_command
from xltransfer.errors import UserError
from xltransfer.study import spec as spec_lib

SAMPLE_DATA = os.path.join(gin_utils.PACKAGE_DIR, "assets", "sample_xtreme")
# The bundled gin configs (the checkout's gin/ or the installed copy), as the trainer finds them.
SPEC = os.path.join(gin_utils.config_dir(), "study", "demo_tiny.gin")
INIT_SEED = 0
CAVEAT = ("This demo trains a tiny, randomly initialised mT5 on a few hundred synthetic "
          "sample sentences. It shows the pipeline working end to end; its numbers are NOT the "
          "scientific answer. For that, run gin/study/xtreme_r_lowres_mt5_small.gin (or _xxl) "
          "on the real XTREME-R data.")


def _usage() -> str:
  return __doc__.strip()


def spec_path() -> str:
  if not os.path.isfile(SPEC):
    raise UserError(f"the demo's study spec {SPEC} is missing: this installation lacks the "
                    "bundled gin/ configs; reinstall xltransfer, or run the demo from a clone "
                    "(`make demo`)")
  return SPEC


def copy_sample_data(destination: str) -> None:
  """Replaces destination with a fresh copy of the bundled sample data."""
  if os.path.isdir(destination):
    shutil.rmtree(destination)
  elif os.path.exists(destination):
    raise UserError(f"{destination} exists and is not a directory; move it away")
  shutil.copytree(SAMPLE_DATA, destination)


def write_initial_checkpoint(path: str, model_size: str, seed: int = INIT_SEED) -> None:
  """A randomly initialised checkpoint of model_size at path (xltransfer's native format)."""
  seed = int(seed)
  import jax  # pylint: disable=import-outside-toplevel
  from xltransfer.checkpoints import native  # pylint: disable=import-outside-toplevel
  from xltransfer.model.config import get_config  # pylint: disable=import-outside-toplevel
  from xltransfer.model.models import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  config = get_config(model_size)
  params = EncoderDecoderModel(config).init(jax.random.PRNGKey(seed))
  native.save_params(params, config, path)


def ensure_initial_checkpoint(path: str, model_size: str, seed: int = INIT_SEED) -> bool:
  """Creates the initial checkpoint unless path holds one; returns True if it created it.

  jax runs in a child process: the study runner forks its stage processes afterwards, and
  forking a process in which jax's threads run can deadlock.
  """
  # The layout of checkpoints.native, checked without importing it: that would start jax here.
  if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "params")):
    return False
  if os.path.exists(path):
    raise UserError(f"{path} exists but is not an xltransfer checkpoint (no config.json and "
                    "params/); delete it and rerun to create the demo's initial checkpoint")
  code = ("import sys; from xltransfer.commands import demo; "
          "demo.write_initial_checkpoint(*sys.argv[1:])")
  child = subprocess.run([sys.executable, "-c", code, path, model_size, str(seed)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         check=False)
  if child.returncode != 0:
    raise UserError(f"could not create the initial checkpoint {path}:\n{child.stdout[-4000:]}")
  return True


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(arg in ("-h", "--help") for arg in argv):
    print(_usage())
    return 0
  # Same flag syntax as `xltransfer study run`, so the spec read here is the one it runs.
  rest, bindings = study_command.split_gin_flags(argv)
  if rest:
    raise UserError(f"unexpected arguments {rest}; `xltransfer demo --help` lists the options")
  start = time.time()
  path = spec_path()
  spec = spec_lib.load_spec(path, bindings)
  if not spec.xtreme_data_dir or "://" in spec.xtreme_data_dir:
    raise UserError(f"{path}: the demo needs a local StudySpec.xtreme_data_dir to copy the "
                    "sample data into")
  print(f"[demo] {CAVEAT}\n")
  copy_sample_data(spec.xtreme_data_dir)
  print(f"[demo] sample data (en, de, sw) copied to {spec.xtreme_data_dir}")
  if ensure_initial_checkpoint(spec.initial_checkpoint, spec.model_size):
    print(f"[demo] created the random {spec.model_size} initial checkpoint "
          f"{spec.initial_checkpoint}")
  else:
    print(f"[demo] using the initial checkpoint {spec.initial_checkpoint}")
  print(f"[demo] running the study {path}; rerun `xltransfer demo` to resume after an "
        "interruption\n")
  code = study_command.main(["run", path, "--report", *argv])
  minutes, seconds = divmod(int(time.time() - start), 60)
  print(f"\n[demo] {'finished' if code == 0 else 'stopped with failed stages'} after "
        f"{minutes}m{seconds:02d}s; study directory {spec.study_dir()}")
  print(f"[demo] {CAVEAT}")
  return code
