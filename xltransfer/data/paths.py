"""Where file-backed sources find their data: gin first, then environment variables.

XTREME-R files follow the layout of the XTREME-R repository's download script under
`xtreme_data_dir()`; the other file-backed sources (CommonsenseQA, CCG, translated intermediate
tasks, plain-text corpora) live under `user_data_dir()`.
"""
import os

import gin

from xltransfer.errors import UserError

XTREME_ENV_VAR = "XTREME_DATA_DIR"
USER_DATA_ENV_VAR = "XLTRANSFER_DATA_DIR"
TARGET_SOURCE_ENV_VAR = "XLTRANSFER_TARGET_SOURCE"


@gin.configurable
def xtreme_data_dir(path=None):
  """The XTREME-R download directory: gin `xtreme_data_dir.path`, else $XTREME_DATA_DIR."""
  return path or os.environ.get(XTREME_ENV_VAR)


@gin.configurable
def target_source(value=None) -> str:
  """Where XTREME-R eval data is read: "files" (the download layout, default) or "tfds" (where
  TFDS has it): gin `target_source.value`, else $XLTRANSFER_TARGET_SOURCE."""
  return value or os.environ.get(TARGET_SOURCE_ENV_VAR) or "files"


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


def user_path(task: str, *parts) -> str:
  """Path of a user-supplied file for task; the task's directory must exist."""
  how = f"set ${USER_DATA_ENV_VAR} or gin `user_data_dir.path`"
  directory = require_dir(user_data_dir(), how, task, *parts[:-1])
  return os.path.join(directory, parts[-1])


def require_file(path: str, task: str) -> str:
  if not os.path.isfile(path):
    raise UserError(f"task {task} needs the file {path}, which does not exist")
  return path
