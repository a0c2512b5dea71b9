"""Checks a study makes before any stage runs: each would otherwise fail hours into the run.

A changed spec must not reuse a finished stage it configures differently; every mixture and
task must be registered; Social IQa (XCOPA's first fine-tuning) and the labelled original
releases must be where the stages will look; the stages' meshes must fit the devices here.
"""
import difflib
import os
import subprocess

from xltransfer import registered_names
from xltransfer.data import paths
from xltransfer.errors import ConfigError, UserError
from xltransfer.study import grid, runner


def check_compatible(study_dir, stages):
  """Refuses to reuse a finished stage whose command the new spec changed."""
  if not os.path.exists(os.path.join(study_dir, grid.STUDY_FILE)):
    return
  _, old_stages, _ = grid.read_study_file(study_dir)
  old = {s.id: s for s in old_stages}
  for stage in stages:
    if stage.id in old and old[stage.id] != stage and runner.own_state(stage) == "done":
      raise UserError(
          f"{study_dir}: stage {stage.id} finished with a different configuration than the "
          f"spec now gives it; use another --output_dir or delete {stage.stage_dir}")


def check_names(stages, where, known=None) -> None:
  """Raises ConfigError naming each mixture/task the stages use that seqio does not know."""
  if known is None:
    remembered = registered_names.remembered()  # no TensorFlow needed when remembered
    if remembered is not None:
      known = remembered | registered_names.loaded_seqio_names()
    else:
      import seqio  # pylint: disable=import-outside-toplevel
      import xltransfer.tasks  # pylint: disable=import-outside-toplevel,unused-import
      known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  unknown = grid.unknown_mixtures(stages, known)
  if unknown:
    problems = []
    for name, stage_id in unknown.items():
      close = difflib.get_close_matches(name, sorted(known), n=3)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      problems.append(f"{name} (stage {stage_id}){hint}")
    raise ConfigError(f"{where}: seqio has no mixture or task " + "; ".join(problems)
                      + "; `xltransfer tasks list` shows the registered names")


def check_data(stages, where, environ=None) -> None:
  """Raises ConfigError naming the Social IQa file when a prefinetune stage still to run would
  not find it: the stage runs only after its intermediate stage, so check before any stage."""
  relative = os.path.join(*grid.SIQA_TRAIN_FILE)
  fix = "or set StudySpec.siqa_steps = 0 to fine-tune XCOPA on COPA alone"
  for stage in stages:
    if stage.role != "prefinetune" or runner.own_state(stage) == "done":
      continue
    data_dir = grid.xtreme_data_dir(stage, environ)
    if data_dir is None or "://" in data_dir:
      continue  # a gin macro or a remote dir: the stage itself reports a missing file
    if not data_dir:
      raise ConfigError(
          f"{where}: stage {stage.id} fine-tunes on Social IQa ({grid.SIQA_MIXTURE}), which "
          f"reads ${grid.XTREME_DATA_ENV_VAR}/{relative}, but no XTREME-R data directory is "
          f"set: set StudySpec.xtreme_data_dir or ${grid.XTREME_DATA_ENV_VAR}, {fix}")
    path = os.path.join(data_dir, relative)
    if not os.path.isfile(path):
      raise ConfigError(
          f"{where}: stage {stage.id} fine-tunes on Social IQa ({grid.SIQA_MIXTURE}) before "
          f"COPA and needs {path}, which does not exist: put Social IQa's "
          f"socialIQa_v1.4_{{trn,dev}}.jsonl in {os.path.dirname(path)} (the XTREME-R "
          f"download layout), {fix}")


def check_labelled_data(stages, where, environ=None) -> None:
  """Raises ConfigError when eval stages still to run read the labelled original releases
  (StudySpec.target_source = "original") but their directory is unset or missing: those
  stages run only after hours of training, so check before any stage."""
  environ = os.environ if environ is None else environ
  for stage in stages:
    bound = dict(stage.bindings)
    if (stage.command != "eval" or bound.get(grid.TARGET_SOURCE_BINDING) != "original"
        or runner.own_state(stage) == "done"):
      continue
    if any(b.split("=", 1)[0].strip() == grid.ORIGINAL_DATA_BINDING for b in stage.raw_bindings):
      continue  # set by the spec's own bindings (maybe a macro): the stage reports a bad dir
    data_dir = bound.get(grid.ORIGINAL_DATA_BINDING) or environ.get(paths.ORIGINAL_ENV_VAR, "")
    if not data_dir:
      raise ConfigError(
          f"{where}: stage {stage.id} scores on the labelled original releases "
          f"(StudySpec.target_source = 'original'), but no directory holds them: set "
          f"StudySpec.original_data_dir or ${paths.ORIGINAL_ENV_VAR} (docs/tasks.md, "
          "\"Labelled evaluation data\", lists what goes there)")
    if "://" not in data_dir and not os.path.isdir(data_dir):
      raise ConfigError(
          f"{where}: stage {stage.id} scores on the labelled original releases in {data_dir}, "
          "which does not exist (StudySpec.original_data_dir; docs/tasks.md, \"Labelled "
          "evaluation data\", lists what goes there)")


def check_devices(stages, program, echo=print, run=subprocess.run) -> int:
  """Runs `PROGRAM train|eval ... --check_devices` once per distinct device configuration of
  the stages still to run; raises ConfigError with the first failure's message.

  A stage whose mesh cannot be laid out on this slice (a v4-128 for a study that needs a
  torus axis of 8, say) fails at start-up, and so does every stage configured like it: without
  this check `study run` would start, and fail, each of them in turn. The check runs in a
  child process, as the stages do, because the process that initialises a TPU holds it.
  Returns how many checks ran.
  """
  seen = {}
  for stage in stages:
    if runner.own_state(stage) != "done":
      seen.setdefault(grid.device_config(stage), stage)
  for stage in seen.values():
    argv = runner.stage_argv(stage, program) + ["--check_devices"]
    result = run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                 stdin=subprocess.DEVNULL, check=False)
    lines = [line for line in (result.stdout or "").splitlines() if line.strip()]
    if result.returncode != 0:
      errors = [line for line in lines if ": error: " in line]
      reason = (errors or lines or [f"exit code {result.returncode}, no output"])[-1].strip()
      sharing = sum(1 for s in stages if grid.device_config(s) == grid.device_config(stage)
                    and runner.own_state(s) != "done")
      raise ConfigError(
          f"stage {stage.id} cannot start on the devices here, nor can the {sharing - 1} other "
          f"stage(s) configured like it; no stage was started. {reason} (check: "
          f"{' '.join(argv[:2])} ... --check_devices)")
    # The command's own line, not whatever a library logged after it.
    said = [line.split("--check_devices: ", 1)[1] for line in lines if "--check_devices: " in line]
    echo(f"[study] devices: {stage.command} stages like {stage.id}: "
         f"{(said or lines or ['ok'])[-1]}")
  return len(seen)
