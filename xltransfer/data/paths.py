"""Where file-backed sources find their data: gin first, then environment variables.

XTREME-R files follow the layout of the XTREME-R repository's download script under
`xtreme_data_dir()`; the labelled original releases of the XTREME-R eval sets (XNLI 1.0,
deepmind/xquad, MLQA v1, TyDi QA GoldP, ...) live in their own layouts under
`original_data_dir()`; the other file-backed sources (CommonsenseQA, CCG, translated
intermediate tasks, plain-text corpora) live under `user_data_dir()`.

`target_source(family)` says which of them an XTREME-R target's eval tasks read:
  "files"     the XTREME-R download (default): what a leaderboard submission is made from;
              its test gold is hidden, so only its dev splits score;
  "original"  the original releases, which publish the test gold (docs/tasks.md, "Labelled
              evaluation data", lists the files per target);
  "tfds"      TFDS, where it has the target (labelled).
gin `target_source.value` (or $XLTRANSFER_TARGET_SOURCE) sets it for all targets and
`target_source.per_target = {"xquad": "original"}` for single ones.
"""
import os

import gin

from xltransfer.errors import ConfigError, UserError

XTREME_ENV_VAR = "XTREME_DATA_DIR"
ORIGINAL_ENV_VAR = "XTREME_ORIGINAL_DATA_DIR"
USER_DATA_ENV_VAR = "XLTRANSFER_DATA_DIR"
TARGET_SOURCE_ENV_VAR = "XLTRANSFER_TARGET_SOURCE"
TARGET_SOURCES = ("files", "original", "tfds")


@gin.configurable
def xtreme_data_dir(path=None):
  """The XTREME-R download directory: gin `xtreme_data_dir.path`, else $XTREME_DATA_DIR."""
  return path or os.environ.get(XTREME_ENV_VAR)


@gin.configurable
def original_data_dir(path=None):
  """The original releases' directory: gin `original_data_dir.path`, else
  $XTREME_ORIGINAL_DATA_DIR."""
  return path or os.environ.get(ORIGINAL_ENV_VAR)


@gin.configurable
def target_source(family=None, value=None, per_target=None) -> str:
  """Where XTREME-R data of target `family` is read: "files" (the download layout, default),
  "original" (the labelled original releases) or "tfds": gin `target_source.per_target[family]`,
  else gin `target_source.value`, else $XLTRANSFER_TARGET_SOURCE."""
  chosen = ((per_target or {}).get(family) if family else None) or value or os.environ.get(
      TARGET_SOURCE_ENV_VAR) or "files"
  if chosen not in TARGET_SOURCES:
    where = (f"gin `target_source.per_target['{family}']`" if (per_target or {}).get(family)
             else f"gin `target_source.value` or ${TARGET_SOURCE_ENV_VAR}")
    raise ConfigError(f"unknown target source {chosen!r} in {where}; valid: "
                      f"{', '.join(TARGET_SOURCES)}")
  return chosen


@gin.configurable
def user_data_dir(path=None):
  """Directory of user-supplied files: gin `user_data_dir.path`, else $XLTRANSFER_DATA_DIR."""
  return path or os.environ.get(USER_DATA_ENV_VAR)


def require_dir(base, how_to_set: str, task: str, *subdirs) -> str:
  """Returns base/subdirs, raising UserError that names the path and the task if missing."""
  if not base:
    raise UserError(f"task {task} needs a data directory: {how_to_set}")
  path = os.path.join(base, *subdirs)
  if not os.path.isdir(path):
    raise UserError(f"task {task} needs the directory {path}, which does not exist "
                    f"({how_to_set})")
  return path


def xtreme_path(task: str, *parts) -> str:
  """Path of an XTREME-R file for task; the task's directory must exist."""
  how = f"set ${XTREME_ENV_VAR} or gin `xtreme_data_dir.path`"
  directory = require_dir(xtreme_data_dir(), how, task, *parts[:-1])
  return os.path.join(directory, parts[-1])


def original_path(task: str, *parts) -> str:
  """Path of an original-release file for task; the file's directory must exist."""
  how = (f"set ${ORIGINAL_ENV_VAR} or gin `original_data_dir.path` (docs/tasks.md, "
         "\"Labelled evaluation data\", says where each release comes from)")
  directory = require_dir(original_data_dir(), how, task, *parts[:-1])
  return os.path.join(directory, parts[-1])


def user_path(task: str, *parts) -> str:
  """Path of a user-supplied file for task; the task's directory must exist."""
  how = f"set ${USER_DATA_ENV_VAR} or gin `user_data_dir.path`"
  directory = require_dir(user_data_dir(), how, task, *parts[:-1])
  return os.path.join(directory, parts[-1])


def require_file(path: str, task: str) -> str:
  if not os.path.isfile(path):
    raise UserError(f"task {task} needs the file {path}, which does not exist")
  return path
