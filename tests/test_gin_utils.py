"""The gin layer (gin_utils): bundled configs found from any directory (checkout and installed
package), the quiet include probe, registration imports, `--gin.` flags."""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from xltransfer import gin_utils
from xltransfer.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_GIN = os.path.join(REPO_ROOT, "gin")


def test_checkout_configs_resolve_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert gin_utils.config_dir() == REPO_GIN
  search = gin_utils.search_paths()
  expected = os.path.join(REPO_GIN, "models", "mt5_tiny.gin")
  # Relative to the bundled configs, repository-style with gin/, and without the suffix.
  for path in ("models/mt5_tiny.gin", "gin/models/mt5_tiny.gin", "models/mt5_tiny",
               "gin/models/mt5_tiny"):
    assert gin_utils.resolve(path, search) == expected, path


def test_given_paths_and_search_paths_come_first(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "models").mkdir()
  local = tmp_path / "models" / "mt5_tiny.gin"
  local.write_text("# a local override\n")
  assert gin_utils.resolve("models/mt5_tiny.gin", gin_utils.search_paths()) == str(local)
  extra = tmp_path / "extra"
  extra.mkdir()
  (extra / "mine.gin").write_text("")
  search = gin_utils.search_paths([f"{tmp_path / 'none'},{extra}"])
  assert search == [str(tmp_path / "none"), str(extra), REPO_GIN]
  assert gin_utils.resolve("mine", search) == str(extra / "mine.gin")
  with pytest.raises(ConfigError, match=r"--gin_file=nope.gin: not found \(looked in the "
                                        r"current directory and .*extra"):
    gin_utils.resolve("nope.gin", search)


def test_installed_copy_is_used_without_a_checkout(tmp_path, monkeypatch):
  # site-packages: xltransfer/gin/ holds the configs; ../gin is the gin-config library.
  site = tmp_path / "site-packages"
  (site / "gin").mkdir(parents=True)
  (site / "gin" / "__init__.py").write_text("")
  installed = site / "xltransfer" / "gin"
  (installed / "models").mkdir(parents=True)
  (installed / "models" / "mt5_tiny.gin").write_text("")
  monkeypatch.setattr(gin_utils, "CHECKOUT_GIN_DIR", str(site / "gin"))
  monkeypatch.setattr(gin_utils, "INSTALLED_GIN_DIR", str(installed))
  monkeypatch.chdir(tmp_path)
  assert gin_utils.config_dir() == str(installed)
  assert gin_utils.resolve("gin/models/mt5_tiny.gin", gin_utils.search_paths()) == str(
      installed / "models" / "mt5_tiny.gin")
  assert gin_utils.exists("models/mt5_tiny") and not gin_utils.exists("models/mt5_huge")


@pytest.mark.slow
def test_setup_py_installs_the_configs_and_the_cli_finds_them(tmp_path):
  """Builds the package as pip would (build_py), then parses a training config with only the
  built package importable, from a directory with no gin/ in sight."""
  source = tmp_path / "source"
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
  shutil.copytree(os.path.join(REPO_ROOT, "xltransfer"), source / "xltransfer", ignore=ignore)
  shutil.copytree(REPO_GIN, source / "gin", ignore=ignore)
  shutil.copytree(os.path.join(REPO_ROOT, "tasks"), source / "tasks", ignore=ignore)
  shutil.copy(os.path.join(REPO_ROOT, "setup.py"), source / "setup.py")
  build = tmp_path / "build"
  proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
                        cwd=source, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  built = {os.path.relpath(os.path.join(d, f), build / "xltransfer" / "gin")
           for d, _, files in os.walk(build / "xltransfer" / "gin") for f in files}
  shipped = {os.path.relpath(os.path.join(d, f), REPO_GIN)
             for d, _, files in os.walk(REPO_GIN) for f in files if f.endswith(".gin")}
  assert shipped and built == shipped

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  script = textwrap.dedent("""
      import gin
      import xltransfer
      from xltransfer import gin_utils
      from xltransfer.planning import run_config
      from xltransfer.tasks import catalog
      files = run_config.parse(["gin/models/mt5_tiny.gin", "runs/finetune.gin"], [], [])
      print(xltransfer.__file__)
      print(gin_utils.config_dir())
      print("\\n".join(files))
      print(gin.query_parameter("xltransfer.model.mt5_config.size"))
      print(gin.query_parameter("xltransfer.partitioning.create_mesh.data"))
      print(catalog.__file__)
  """)
  env = dict(os.environ, PYTHONPATH=str(build), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  package, config_dir, *files, size, data, catalog = proc.stdout.split()
  installed = str(build / "xltransfer" / "gin")
  assert package == str(build / "xltransfer" / "__init__.py")
  assert config_dir == installed
  assert files == [os.path.join(installed, "models", "mt5_tiny.gin"),
                   os.path.join(installed, "runs", "finetune.gin")]
  # runs/finetune.gin's `include 'meshes/cpu.gin'` came from the installed copy too.
  assert size == "tiny" and data == "-1"
  # The top-level tasks/ is installed as the package xltransfer.tasks.
  assert catalog == str(build / "xltransfer" / "tasks" / "catalog.py")


def test_include_probes_are_dropped_only_while_parsing(caplog):
  import logging  # pylint: disable=import-outside-toplevel
  with caplog.at_level(logging.INFO):
    with gin_utils.quiet_include_probes():
      logging.error("Path not found: meshes/cpu.gin")
      logging.info("system_path_file_exists:meshes/cpu.gin")
      logging.error("a real error")
    logging.error("Path not found: shown outside")
  messages = [r.getMessage() for r in caplog.records]
  assert messages == ["a real error", "Path not found: shown outside"]


def test_import_modules_names_a_missing_module(caplog):
  with pytest.raises(ConfigError, match="cannot import xltransfer_no_such_module"):
    gin_utils.import_modules(["xltransfer_no_such_module"])
  gin_utils.import_modules([], optional=["xltransfer_no_such_optional"])
  assert "xltransfer_no_such_optional could not be imported" in caplog.text


def test_study_flags_qualify_spec_fields():
  rest, bindings = gin_utils.split_gin_flags(
      ["run", "spec.gin", "--gin.seeds=[0, 1]", "--gin.MACRO", "3"],
      qualify=lambda name: f"StudySpec.{name}" if name == "seeds" else name)
  assert rest == ["run", "spec.gin"]
  assert bindings == ["StudySpec.seeds = [0, 1]", "MACRO = 3"]


@pytest.mark.parametrize("line, new", [
    ("import xltransfer.train.model_factory", "xltransfer.model.factory"),
    ("xltransfer.train.mt5_config.size = 'tiny'", "xltransfer.model.mt5_config")])
def test_a_config_naming_a_moved_configurable_is_told_its_new_name(tmp_path, line, new):
  import gin  # pylint: disable=import-outside-toplevel
  config = tmp_path / "old.gin"
  config.write_text(line + "\n")
  gin.clear_config()
  try:
    with pytest.raises(ConfigError, match=rf"(?s)old\.gin.*is now {re.escape(new)}: update"):
      gin_utils.parse_config([str(config)], [], [])
  finally:
    gin.clear_config()
