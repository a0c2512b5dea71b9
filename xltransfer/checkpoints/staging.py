"""Writing an output checkpoint directory all at once: refuse to clobber, stage, then rename.

Every writer of `xltransfer convert` goes through `staged_directory`, so a destination either
holds a complete checkpoint or is left as it was: a failure part-way (a full disk, a parameter
that does not fit) leaves no half-written directory that looks like a checkpoint.
"""
import contextlib
import os
import shutil

from xltransfer.errors import CheckpointError

STAGING_SUFFIX = ".partial"


def check_destination(path: str, overwrite: bool):
  """Refuses an existing non-empty destination unless `overwrite` (a file is never replaced)."""
  if os.path.isfile(path):
    raise CheckpointError(f"{path}: exists and is a file, not a checkpoint directory")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise CheckpointError(f"{path}: already exists and is not empty (refusing to overwrite; "
                          "pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_directory(path: str, overwrite: bool = False):
  """Yields a fresh staging directory beside `path`; on success it replaces `path`.

  On any exception the staging directory is removed and `path` is untouched.
  """
  path = os.path.abspath(path)
  check_destination(path, overwrite)
  staging = path + STAGING_SUFFIX
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  if os.path.isdir(path):
    shutil.rmtree(path)
  os.replace(staging, path)
