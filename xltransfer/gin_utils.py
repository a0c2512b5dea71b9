"""The gin layer every command uses: bundled configs, search paths, flags, parsing, imports.

- Bundled configs: the repository's top-level `gin/` is also installed as package data in
  `xltransfer/gin/` (setup.py), so a pip-installed xltransfer finds `models/mt5_small.gin` and
  the includes inside it. A checkout or editable install uses the checkout's `gin/` (edits take
  effect at once). `python -c "import xltransfer.gin_utils as g; print(g.config_dir())"`
  prints the one in use. A `--gin_file` is looked up as given, under `--gin_search_paths`,
  then among the bundled configs (also as `gin/...`).
- Flags: `--gin.NAME=VALUE` (T5X's syntax) becomes the binding `NAME = VALUE` (`split_gin_flags`).
- Parsing (`parse_config`): every mistake becomes a ConfigError that names the file and line or
  the binding: an unknown configurable, a required macro left unset, a macro used but never
  defined, a macro defined but used by nothing (a typo such as TRAIN_STEP), a command-line
  string without gin's quotes. gin's "Path not found" probe lines (it logs one for every
  search-path miss of an include, although the include is then found) are dropped while
  parsing (`quiet_include_probes`).
- Registrations (`import_modules`): the modules whose configurables and seqio tasks a config
  names are imported before it is parsed.
"""
import contextlib
import difflib
import importlib
import logging
import os
import re
import shlex
from typing import Callable, Iterator, List, Optional, Sequence

import gin

from xltransfer.errors import ConfigError

# ---- bundled configs and search paths ----

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


# ---- gin's include probes ----

def _is_include_probe(record: logging.LogRecord) -> bool:
  return str(record.msg).startswith(("Path not found", "system_path_file_exists"))


class _IncludeProbeFilter(logging.Filter):
  """Drops gin's include probes (gin logs them through the root logger)."""

  def filter(self, record):
    return not _is_include_probe(record)


@contextlib.contextmanager
def quiet_include_probes() -> Iterator[None]:
  """While parsing: gin's 'Path not found' lines for include search-path misses are dropped."""
  probe_filter = _IncludeProbeFilter()
  root = logging.getLogger()
  root.addFilter(probe_filter)
  try:
    yield
  finally:
    root.removeFilter(probe_filter)


# ---- command-line bindings ----

# Configurables and modules that configs named under an earlier name: the error names the new one.
RENAMED = {
    "xltransfer.train.model_factory": "xltransfer.model.factory",
    "xltransfer.train.mt5_config": "xltransfer.model.mt5_config",
    "xltransfer.train.encoder_decoder_model": "xltransfer.model.encoder_decoder_model",
    "xltransfer.train.dual_encoder_model": "xltransfer.model.dual_encoder_model",
}
T5X_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
              "BATCH_SIZE", "INITIAL_CHECKPOINT_PATH", "DROPOUT_RATE", "LEARNING_RATE",
              "EVAL_PERIOD", "LOSS_NORMALIZING_FACTOR")


def split_gin_flags(argv: Sequence[str], qualify: Optional[Callable[[str], str]] = None):
  """Pulls `--gin.NAME=VALUE` (T5X's syntax) out of argv: (other arguments, gin bindings).

  Every command that reads a gin config splits its flags with this, so `--gin.` means the same
  everywhere; `qualify` maps a short NAME to the binding's (`study run --gin.seeds=...` binds
  `StudySpec.seeds`).
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
      bindings.append(f"{qualify(name) if qualify else name} = {value}")
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


def parse_config(gin_files: Sequence[str], bindings: Sequence[str], extra_paths: Sequence[str]):
  """Parses the config (`extra_paths`: --gin_search_paths); every mistake becomes a
  ConfigError that names the file and line or the binding. Returns the resolved files."""
  search = search_paths(extra_paths)
  for path in search:
    gin.add_config_file_search_path(path)
  files = [resolve(f, search) for f in gin_files]
  if not files:
    raise ConfigError("no --gin_file given; e.g. --gin_file=models/mt5_small.gin "
                      "--gin_file=runs/finetune.gin")
  try:
    with quiet_include_probes():
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
    renamed = [f"{old} is now {new}" for old, new in RENAMED.items()
               if re.search(re.escape(old) + r"\b", message)]
    hint = f" ({'; '.join(renamed)}: update the gin file)" if renamed else ""
    raise ConfigError(f"gin config error: {message}{hint}") from e
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


# ---- registrations ----

def import_modules(names: Sequence[str], optional: Sequence[str] = ()) -> None:
  """Imports the modules that register configurables and seqio tasks, before parsing.

  A module in `optional` that cannot be imported is a warning (its registrations are then
  missing, which the parse reports if the config needs them); any other is a ConfigError.
  """
  for name in list(names) + list(optional):
    try:
      importlib.import_module(name)
    except ImportError as e:
      if name not in optional:
        raise ConfigError(f"cannot import {name}: {e}") from e
      logging.warning("%s could not be imported (%s); only tasks registered by gin `import` "
                      "lines are available", name, e)
