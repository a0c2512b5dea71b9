"""Where the project's own gin configs are, and how a `--gin_file` path is resolved.

The configs live in the repository's top-level `gin/`; setup.py also installs them as package
data in `xltransfer/gin/`, so that a pip-installed xltransfer (no checkout) finds
`models/mt5_small.gin` and the includes inside it. A source checkout or editable install uses
the checkout's `gin/` (edits there take effect at once); an installed wheel uses its copy.
`python -c "import xltransfer.gin_paths as g; print(g.config_dir())"` prints the one in use.
"""
import os
from typing import List, Sequence

from xltransfer.errors import ConfigError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_GIN_DIR = os.path.join(os.path.dirname(PACKAGE_DIR), "gin")
INSTALLED_GIN_DIR = os.path.join(PACKAGE_DIR, "gin")
# Repository-style paths (`gin/models/mt5_small.gin`) also resolve in the bundled configs.
_REPO_PREFIX = "gin"


def _is_checkout_gin_dir(path: str) -> bool:
  # Next to an installed package, `../gin` is the gin-config library itself: a checkout is
  # recognised by its setup.py beside gin/.
  root = os.path.dirname(path)
  return os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(
      os.path.join(path, "models"))


def config_dir() -> str:
  """The directory of the bundled configs: the checkout's gin/, else the installed copy."""
  if _is_checkout_gin_dir(CHECKOUT_GIN_DIR):
    return CHECKOUT_GIN_DIR
  return INSTALLED_GIN_DIR


def search_paths(extra: Sequence[str] = ()) -> List[str]:
  """`--gin_search_paths` entries (each may be comma-separated), then the bundled configs."""
  return [p for entry in extra for p in entry.split(",") if p] + [config_dir()]


def _without_repo_prefix(path: str):
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) > 1 and parts[0] == _REPO_PREFIX:
    return os.path.join(*parts[1:])
  return None


def resolve(path: str, search: Sequence[str]) -> str:
  """The absolute path of a gin file given as is, under a search path, or as `gin/...`.

  A missing `.gin` suffix is added; the error names every place looked in.
  """
  candidates = [path] + [os.path.join(d, path) for d in search]
  short = None if os.path.isabs(path) else _without_repo_prefix(path)
  if short is not None:
    candidates.append(os.path.join(config_dir(), short))
  if not path.endswith(".gin"):
    candidates += [c + ".gin" for c in candidates]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise ConfigError(f"--gin_file={path}: not found (looked in the current directory and "
                    f"{', '.join(search)})")


def exists(path: str, search: Sequence[str] = ()) -> bool:
  """Whether `resolve` finds `path` (for checks that report their own error)."""
  try:
    resolve(path, search_paths(search))
  except ConfigError:
    return False
  return True
