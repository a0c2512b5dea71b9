"""The task and mixture names `import xltransfer.tasks` registers, remembered between runs, so
that a mistyped name is reported before TensorFlow is imported (importing it takes 4-5 s on a
2-core machine; a config error should not wait for it).

tasks/__init__.py writes the names after registering them (`remember`). `unknown(names)` reads
them back when they were written by the same code and data: a fingerprint of every file under
xltransfer/ and tasks/ (path, size, modification time; the bundled sample texts decide which
`xlt_span_sample_*` tasks exist) and the seqio and tfds versions. It
returns the names that are neither remembered nor in seqio's registry (which holds a user's
own tasks once their module imported seqio), or None when nothing valid is remembered: the
caller then imports the tasks and asks seqio, as before.

The cache is one JSON file in $XLTRANSFER_CACHE_DIR, else $XDG_CACHE_HOME/xltransfer, else
~/.cache/xltransfer; it is written atomically, and a directory that cannot be written only
means the slow path.
"""
import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
from typing import Iterable, List, Optional, Sequence

from xltransfer.errors import ConfigError

CACHE_ENV = "XLTRANSFER_CACHE_DIR"
CACHE_FILE = "task_names.json"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def cache_path() -> str:
  directory = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
      "xltransfer")
  return os.path.join(directory, CACHE_FILE)


def _source_dirs() -> List[str]:
  # find_spec locates the tasks package (top-level tasks/ in a checkout) without running it.
  spec = importlib.util.find_spec("xltransfer.tasks")
  tasks_dirs = list(spec.submodule_search_locations or []) if spec else []
  return [PACKAGE_DIR] + tasks_dirs


def fingerprint() -> str:
  """Changes whenever a file that could decide a registered name, or seqio/tfds, changes."""
  digest = hashlib.sha256()
  for root_dir in _source_dirs():
    for directory, subdirs, files in os.walk(root_dir):
      subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
      for name in sorted(files):
        if not name.endswith((".pyc", ".tmp")):
          stat = os.stat(os.path.join(directory, name))
          digest.update(f"{os.path.join(directory, name)}:{stat.st_size}:"
                        f"{stat.st_mtime_ns}\n".encode())
  for package in ("seqio", "tensorflow-datasets"):
    try:
      digest.update(f"{package}=={importlib.metadata.version(package)}\n".encode())
    except importlib.metadata.PackageNotFoundError:
      digest.update(f"{package} absent\n".encode())
  return digest.hexdigest()


def remember(names: Iterable[str]) -> None:
  """Writes the names (best effort: an unwritable cache directory is not an error)."""
  path = cache_path()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False,
                                     suffix=".tmp") as f:
      json.dump({"fingerprint": fingerprint(), "names": sorted(names)}, f)
    os.replace(f.name, path)
  except OSError:
    pass


def remembered() -> Optional[set]:
  """The remembered names, if they were written by the code installed now."""
  try:
    with open(cache_path()) as f:
      cached = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(cached, dict) or cached.get("fingerprint") != fingerprint():
    return None
  return set(cached.get("names", ()))


def loaded_seqio_names() -> set:
  seqio = sys.modules.get("seqio")  # never imported here: that is the slow part
  if seqio is None:
    return set()
  return set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())


def unknown(names: Sequence[str]) -> Optional[List[str]]:
  """Of `names`, those not registered; None when that cannot be told without the tasks."""
  known = remembered()
  if known is None:
    return None
  known |= loaded_seqio_names()
  return [name for name in names if name not in known]


def check(names: Sequence[str], what: str) -> None:
  """Raises a ConfigError naming each name known not to be registered, with suggestions;
  returns quietly when all are registered or nothing valid is remembered."""
  missing = unknown(names)
  if not missing:
    return
  known = sorted(remembered() | loaded_seqio_names())
  problems = []
  for name in missing:
    close = difflib.get_close_matches(name, known, n=5)
    problems.append(f"{what} {name!r} is not a registered seqio task or mixture"
                    + (f"; did you mean {', '.join(close)}?" if close else ""))
  raise ConfigError("; ".join(problems) + f" ({len(known)} are registered: `xltransfer tasks "
                    "list`; a task of your own: load its module with --module or a gin "
                    "`import` line)")
