"""A full disk as one line that names the path, instead of a library's traceback.

    with reporting_disk_full(path, bytes_needed=n):
      write(path)

turns an ENOSPC (or EDQUOT, a full quota) raised inside the block - directly as an OSError,
or wrapped by a library (orbax, TensorStore and TensorFlow re-raise it as other exception
types, keeping the OS message) - into a `DiskFullError` (a UserError: the CLI prints the
message and exits 2). Anything else passes through unchanged, and so does a UserError (it
names its own path).
"""
import contextlib
import errno
from typing import Optional

from xltransfer.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES = ("no space left on device", "disk quota exceeded")


class DiskFullError(UserError):
  """A write failed because the device (or the quota) is full."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, is a full device or quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _FULL:
      return True
    if any(m in str(error).lower() for m in _FULL_MESSAGES):
      return True
    if _is_tensorflow_resource_exhausted(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _is_tensorflow_resource_exhausted(error: BaseException) -> bool:
  # tf.io.gfile reports ENOSPC as RESOURCE_EXHAUSTED with an empty message (seen writing to
  # /dev/full). Matched by name: this module must not import TensorFlow (the engine runs
  # without it).
  return (type(error).__name__ == "ResourceExhaustedError"
          and type(error).__module__.startswith("tensorflow"))


def _size(n: int) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} bytes"


def disk_full_error(path: str, bytes_needed: Optional[int] = None,
                    what: str = "") -> DiskFullError:
  needed = f" (about {_size(bytes_needed)} needed)" if bytes_needed else ""
  what = f" {what}" if what else ""
  return DiskFullError(f"no space left on device writing{what} {path}{needed}; free space "
                       "there (or point the run at another disk) and rerun")


@contextlib.contextmanager
def reporting_disk_full(path: str, bytes_needed: Optional[int] = None, what: str = ""):
  try:
    yield
  except UserError:
    raise  # already says what to fix (e.g. another module's full-disk error, with its path)
  except Exception as e:  # libraries wrap the OSError in their own types
    if is_disk_full(e):
      raise disk_full_error(path, bytes_needed, what) from e
    raise
