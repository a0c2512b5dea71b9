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
  names are imported before it is parsed; a slow one (`defer_modules`: xltransfer.tasks, which
  loads seqio and TensorFlow) after it, unless the config names one of its configurables.
- A user's task modules (`import_user_modules`, `--module`): a module name or a `.py` path,
  imported before parsing; T5X's `MIXTURE_OR_TASK_MODULE` macro (a gin file's or
  `--gin.MIXTURE_OR_TASK_MODULE`) is imported after parsing, before the config is locked. The
  working directory and each given gin file's directory are on the import path, so a gin
  file's `import my_tasks` finds `my_tasks.py` beside it. A module that fails to import is a
  ConfigError naming the file and line where it failed.
"""
import ast
import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
import re
import shlex
import sys
import sysconfig
import traceback
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
# T5X's macro naming the module that registers a run's tasks: read by parse_config, so it
# counts as used although no binding refers to it.
MODULE_MACRO = "MIXTURE_OR_TASK_MODULE"
T5X_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", MODULE_MACRO, "TASK_FEATURE_LENGTHS",
              "TRAIN_STEPS", "BATCH_SIZE", "INITIAL_CHECKPOINT_PATH", "DROPOUT_RATE",
              "LEARNING_RATE", "EVAL_PERIOD", "LOSS_NORMALIZING_FACTOR")


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


def parse_config(gin_files: Sequence[str], bindings: Sequence[str], extra_paths: Sequence[str],
                 modules: Sequence[str] = ()):
  """Parses the config (`extra_paths`: --gin_search_paths); every mistake becomes a
  ConfigError that names the file and line or the binding. Returns the resolved files.

  The user's `modules` (--module) are imported first; between parsing and locking the
  config, the module T5X's MIXTURE_OR_TASK_MODULE names (its registrations may add
  configurables, which a locked config refuses).
  """
  search = search_paths(extra_paths)
  for path in search:
    gin.add_config_file_search_path(path)
  files = [resolve(f, search) for f in gin_files]
  if not files:
    raise ConfigError("no --gin_file given; e.g. --gin_file=models/mt5_small.gin "
                      "--gin_file=runs/finetune.gin")
  add_import_paths(files)
  import_user_modules(modules)
  try:
    with quiet_include_probes():
      gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    import_user_modules(_module_macro(), f"{MODULE_MACRO} =")
    gin.finalize()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, _PARSE_ERRORS) and not _raised_by_gin_import(e):
      raise
    if _imported_deferred_for(e):
      gin.clear_config()
      return parse_config(gin_files, bindings, extra_paths, modules)
    _raise_parse_error(e, files, bindings)
  defined, used = _macro_names_used_and_defined()
  unused = sorted(defined - used - {MODULE_MACRO})
  if unused:
    problems = []
    for name in unused:
      close = difflib.get_close_matches(name, sorted((used | set(T5X_MACROS)) - {name}), n=3)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      where = _where(r"^\s*" + name + r"\s*=", files, bindings)
      problems.append(f"{name} at {where}{hint}")
    raise ConfigError("macro defined but used by nothing (a typo?): " + "; ".join(problems))
  return files


# What gin raises for a mistake in a config (a gin `import` line's module may raise anything).
_PARSE_ERRORS = (ValueError, IOError, ImportError, SyntaxError)


def _raise_parse_error(e: Exception, files: Sequence[str], bindings: Sequence[str]):
  """The ConfigError for an exception of gin's parse or finalize."""
  message = str(e)
  required = re.search(r"(\w+)/macro\.value set to `%gin\.REQUIRED`", message)
  undefined = re.search(r"No bindings specified for '(\w+)/gin\.macro'", message)
  if required:
    name = required.group(1)
    where = _where(r"^\s*" + name + r"\s*=", files, bindings)
    defined, used = _macro_names_used_and_defined()
    typos = difflib.get_close_matches(name, sorted(defined - used - {name}), n=3)
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
    close = difflib.get_close_matches(name, sorted((defined | set(T5X_MACROS)) - {name}), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = _where("%" + name + r"\b", files, bindings)
    raise ConfigError(f"macro %{name} is used at {where} but never defined{hint}") from e
  renamed = [f"{old} is now {new}" for old, new in RENAMED.items()
             if re.search(re.escape(old) + r"\b", message)]
  if renamed:
    raise ConfigError(f"gin config error: {message} ({'; '.join(renamed)}: update the gin "
                      "file)") from e
  if _raised_by_gin_import(e):
    # gin appends '  In file "F", line N' and the statement to the message.
    located = re.search(r'In file "(.*)", line (\d+)\n\s*(.*)', message)
    what = (f"{located.group(1)}:{located.group(2)}: `{located.group(3).strip()}`" if located
            else "a gin `import` line")
    raise ConfigError(_import_failure(what, None, e)) from e
  raise ConfigError(f"gin config error: {message}") from e


# ---- registrations ----

def import_modules(names: Sequence[str], optional: Sequence[str] = ()) -> None:
  """Imports the modules that register configurables and seqio tasks, before parsing (or
  after it: a locked config is unlocked meanwhile, as registrations add configurables).

  A module in `optional` that cannot be imported is a warning (its registrations are then
  missing, which the parse reports if the config needs them); any other is a ConfigError.
  """
  for name in list(names) + list(optional):
    try:
      with gin.unlock_config():
        importlib.import_module(name)
    except ImportError as e:
      if name not in optional:
        raise ConfigError(f"cannot import {name}: {e}") from e
      logging.warning("%s could not be imported (%s); only tasks registered by gin `import` "
                      "lines are available", name, e)


# Registration modules too slow to import before every parse (xltransfer.tasks loads seqio
# and TensorFlow: seconds that a mistyped macro need not wait): `defer_modules` names them,
# `parse_config` imports them only for a config that names a configurable nothing imported
# yet registers (then parses again), and the command imports them after the parse.
_DEFERRED: List[str] = []


def defer_modules(names: Sequence[str]) -> None:
  """Registration modules that `parse_config` imports only when the config needs them."""
  _DEFERRED[:] = [name for name in names if name not in sys.modules]


def _imported_deferred_for(error: Exception) -> bool:
  """For an unknown configurable: imports the deferred modules (warning on failure); whether
  any was, so that the parse is worth repeating."""
  if not _DEFERRED or "No configurable matching" not in str(error):
    return False
  pending = list(_DEFERRED)
  _DEFERRED.clear()
  import_modules([], pending)
  return any(name in sys.modules for name in pending)


# ---- a user's task modules ----

def add_module_flag(parser) -> None:
  """The `--module` flag of every command that reads tasks (train, eval, plan, study, tasks)."""
  parser.add_argument(
      "--module", action="append", default=[], metavar="MODULE",
      help="a module registering your seqio tasks or gin configurables, imported before the "
           "config is parsed: a module name (found from the working directory, the gin "
           "files' directories or PYTHONPATH) or a path to a .py file; repeatable. T5X's "
           f"--gin.{MODULE_MACRO}='name' works too (imported after parsing)")


def add_import_paths(gin_files: Sequence[str]) -> None:
  """The working directory and the directories of the user's gin files join the import path
  (after what is already there, so a local file cannot shadow an installed package)."""
  bundled = config_dir() + os.sep
  directories = [os.getcwd()] + [os.path.dirname(os.path.abspath(f)) for f in gin_files
                                 if not os.path.abspath(f).startswith(bundled)]
  for directory in directories:
    if directory not in sys.path:
      sys.path.append(directory)


def _module_macro() -> List[str]:
  """The module names bound to MIXTURE_OR_TASK_MODULE (T5X: a name or None), if any."""
  try:
    value = gin.query_parameter(f"%{MODULE_MACRO}")
  except ValueError:
    return []
  if value is None:
    return []
  values = list(value) if isinstance(value, (list, tuple)) else [value]
  if not all(isinstance(v, str) for v in values):
    raise ConfigError(f"{MODULE_MACRO} = {value!r}: expected a module name in quotes, e.g. "
                      f"{MODULE_MACRO} = 'my_tasks'")
  return values


def _is_path(spec: str) -> bool:
  return spec.endswith(".py") or os.sep in spec


def _import_file(spec: str) -> str:
  """Imports a `.py` file as the module named by its stem; returns that name. Its directory
  joins the end of the import path (for its sibling imports) without shadowing anything."""
  path = os.path.abspath(os.path.expanduser(spec))
  if not os.path.isfile(path):
    raise ConfigError(f"--module={spec}: no such file")
  directory, filename = os.path.split(path)
  name = filename[:-len(".py")] if filename.endswith(".py") else filename
  loaded = sys.modules.get(name)
  if loaded is not None:
    loaded_from = os.path.abspath(getattr(loaded, "__file__", "") or "")
    if loaded_from != path:
      raise ConfigError(f"--module={spec}: a module named {name!r} is already imported from "
                        f"{loaded_from or 'a built-in'}; rename the file")
    return name
  if directory not in sys.path:
    sys.path.append(directory)
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module
  try:
    module_spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]  # as a failed `import` leaves nothing behind
    raise
  return name


def import_user_modules(specs: Sequence[str], flag: str = "--module=") -> None:
  """Imports a user's task modules (names or `.py` paths); a failure is a ConfigError naming
  the file and line where the import failed."""
  add_import_paths(())
  for spec in specs:
    name = spec[:-len(".py")].rsplit(os.sep, 1)[-1] if _is_path(spec) else spec
    try:
      if _is_path(spec):
        _import_file(spec)
      else:
        importlib.import_module(spec)
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(_import_failure(f"{flag}{spec}", name, e)) from e


def load_registrations(gin_files: Sequence[str], extra_paths: Sequence[str] = (),
                       modules: Sequence[str] = ()) -> List[str]:
  """For a command that runs nothing from a config (`xltransfer tasks`): imports `modules`,
  then parses the gin files for their `import` lines, their MIXTURE_OR_TASK_MODULE and
  settings such as the target source, without requiring their macros to be set. The
  modules whose configurables the files bind must be imported first. Returns the files."""
  search = search_paths(extra_paths)
  for path in search:
    gin.add_config_file_search_path(path)
  files = [resolve(f, search) for f in gin_files]
  add_import_paths(files)
  import_user_modules(modules)
  try:
    with quiet_include_probes():
      gin.parse_config_files_and_bindings(files, [], finalize_config=False)
    import_user_modules(_module_macro(), f"{MODULE_MACRO} =")
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, _PARSE_ERRORS) and not _raised_by_gin_import(e):
      raise
    _raise_parse_error(e, files, [])
  return files


def _raised_by_gin_import(error: Exception) -> bool:
  return any(frame.name == "process_import"
             for frame in traceback.extract_tb(error.__traceback__))


def _is_library_file(path: str) -> bool:
  library_dirs = {sysconfig.get_paths()[key] for key in ("stdlib", "purelib", "platlib")}
  return (path.startswith("<") or path.startswith(PACKAGE_DIR + os.sep)
          or any(path.startswith(d + os.sep) for d in library_dirs))


def _failure_site(error: Exception) -> str:
  """FILE:LINE where an import failed: a SyntaxError's own, else the innermost frame in the
  user's code (not the import machinery, installed packages or xltransfer)."""
  if isinstance(error, SyntaxError) and error.filename and error.lineno:
    return f"{error.filename}:{error.lineno}"
  frames = traceback.extract_tb(error.__traceback__)
  own = [f for f in frames if not _is_library_file(f.filename)]
  frame = (own or frames)[-1] if (own or frames) else None
  return f"{frame.filename}:{frame.lineno}" if frame else "unknown location"


def _import_failure(what: str, name: Optional[str], error: Exception) -> str:
  """The message for a module that could not be imported (by --module or a gin import)."""
  missing = None
  if isinstance(error, ModuleNotFoundError):
    # gin re-raises with the file and line added to the message and `name` lost.
    named = re.search(r"No module named '([\w.]+)'", str(error))
    missing = error.name or (named.group(1) if named else None)
  if missing and (name is None or name == missing or name.startswith(missing + ".")):
    stem = missing.rsplit(".", 1)[-1]
    return (f"{what}: no module named {missing!r} on the import path (the working directory, "
            f"the gin files' directories, PYTHONPATH, the installed packages); pass its file "
            f"(--module=path/to/{stem}.py) or add its directory to PYTHONPATH")
  reason = (str(error).splitlines() or [""])[0]
  return (f"{what}: importing {name or 'the module'} failed at {_failure_site(error)}: "
          f"{type(error).__name__}: {reason}")
