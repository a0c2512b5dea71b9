"""A user's task modules load in every command: `--module` (a name or a .py path), a gin file's
`import` line (found beside the gin file or in the working directory), T5X's
MIXTURE_OR_TASK_MODULE; failures name the file and line. Also the commented template
tasks/my_task_template.py, evaluated end to end as a user would."""
import io
import json
import os
import sys
import textwrap

import gin
import pytest
import seqio

from xltransfer import cli
from xltransfer import gin_utils
from xltransfer.commands import tasks as tasks_command
from xltransfer.errors import ConfigError, UserError
from xltransfer.evaluation import examples
from xltransfer.study import grid, runner
from xltransfer.study import spec as spec_lib
from xltransfer.tasks import catalog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(REPO, "tasks", "my_task_template.py")


@pytest.fixture
def isolated_imports(monkeypatch):
  """sys.path and sys.modules as they were; seqio's registry without the tasks made here."""
  monkeypatch.setattr(sys, "path", list(sys.path))
  before_modules = set(sys.modules)
  before_tasks = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  before_entries = set(catalog.ENTRIES)
  gin.clear_config()
  yield
  gin.clear_config()
  for name in set(sys.modules) - before_modules:
    if name.startswith(("user_tasks_", "my_task_template")):
      del sys.modules[name]
  for name in set(seqio.TaskRegistry.names()) - before_tasks:
    seqio.TaskRegistry.remove(name)
  for name in set(seqio.MixtureRegistry.names()) - before_tasks:
    seqio.MixtureRegistry.remove(name)
  for name in set(catalog.ENTRIES) - before_entries:
    del catalog.ENTRIES[name]


def _task_module(directory, name, body=None):
  """A module registering the plain seqio task `name` (what a user writes)."""
  body = body if body is not None else textwrap.dedent(f"""\
      import seqio
      from xltransfer.data import vocab
      seqio.TaskRegistry.add(
          {name!r}, source=seqio.TextLineDataSource({{"validation": "/dev/null"}}),
          preprocessors=[],
          output_features={{"targets": seqio.Feature(vocab.get_vocabulary("builtin"))}})
      """)
  path = directory / f"{name}.py"
  path.write_text(body)
  return path


def test_module_by_path_and_by_name_from_the_working_directory(tmp_path, monkeypatch,
                                                               isolated_imports):
  by_path = _task_module(tmp_path, "user_tasks_path")
  gin_utils.import_user_modules([str(by_path)])
  assert "user_tasks_path" in seqio.TaskRegistry.names()
  elsewhere = tmp_path / "cwd"
  elsewhere.mkdir()
  _task_module(elsewhere, "user_tasks_name")
  monkeypatch.chdir(elsewhere)
  gin_utils.import_user_modules(["user_tasks_name"])
  assert "user_tasks_name" in seqio.TaskRegistry.names()
  # The module's directory goes after the installed packages: it cannot shadow them.
  assert sys.path.index(str(elsewhere)) > sys.path.index(os.path.dirname(seqio.__path__[0]))


def test_module_errors_name_the_module_and_the_failing_line(tmp_path, isolated_imports):
  with pytest.raises(ConfigError, match=r"--module=user_tasks_none: no module named "
                                        r"'user_tasks_none' .*--module=path/to/user_tasks_none\.py"):
    gin_utils.import_user_modules(["user_tasks_none"])
  with pytest.raises(ConfigError, match=r"--module=.*missing\.py: no such file"):
    gin_utils.import_user_modules([str(tmp_path / "missing.py")])
  raising = _task_module(tmp_path, "user_tasks_raises",
                         "import os\n\nVALUE = int('not a number')\n")
  with pytest.raises(ConfigError, match=rf"importing user_tasks_raises failed at "
                                        rf"{raising}:3: ValueError: invalid literal"):
    gin_utils.import_user_modules([str(raising)])
  assert "user_tasks_raises" not in sys.modules  # as after a failed `import`
  syntax = _task_module(tmp_path, "user_tasks_syntax", "x = 1\ndef broken(:\n")
  with pytest.raises(ConfigError, match=rf"{syntax}:2: SyntaxError"):
    gin_utils.import_user_modules([str(syntax)])
  missing_dependency = _task_module(tmp_path, "user_tasks_dep", "import user_tasks_nodep\n")
  with pytest.raises(ConfigError, match=rf"failed at {missing_dependency}:1: ModuleNotFoundError"):
    gin_utils.import_user_modules([str(missing_dependency)])
  clash = tmp_path / "other"
  clash.mkdir()
  (clash / "json.py").write_text("")
  with pytest.raises(ConfigError, match="a module named 'json' is already imported from"):
    gin_utils.import_user_modules([str(clash / "json.py")])


def test_a_gin_import_line_finds_the_module_beside_the_gin_file(tmp_path, monkeypatch,
                                                                 isolated_imports):
  configs = tmp_path / "configs"
  configs.mkdir()
  _task_module(configs, "user_tasks_beside")
  (configs / "run.gin").write_text("import user_tasks_beside\n")
  monkeypatch.chdir(tmp_path)  # not the gin file's directory
  gin_utils.parse_config([str(configs / "run.gin")], [], [])
  assert "user_tasks_beside" in seqio.TaskRegistry.names()


def test_a_failing_gin_import_line_names_the_gin_line_and_the_module_line(tmp_path,
                                                                         isolated_imports):
  (tmp_path / "missing.gin").write_text("# my run\nimport user_tasks_absent\n")
  with pytest.raises(ConfigError, match=r"missing\.gin:2: `import user_tasks_absent`: no module "
                                        r"named 'user_tasks_absent'"):
    gin_utils.parse_config([str(tmp_path / "missing.gin")], [], [])
  gin.clear_config()
  bad = _task_module(tmp_path, "user_tasks_bad", "\n\nraise RuntimeError('no data dir')\n")
  (tmp_path / "bad.gin").write_text("import user_tasks_bad\n")
  with pytest.raises(ConfigError, match=rf"bad\.gin:1: `import user_tasks_bad`: importing the "
                                        rf"module failed at {bad}:3: RuntimeError: no data dir"):
    gin_utils.parse_config([str(tmp_path / "bad.gin")], [], [])


@pytest.mark.parametrize("where", ["gin file", "command line"])
def test_t5x_mixture_or_task_module_is_imported_and_counts_as_used(tmp_path, monkeypatch,
                                                                   isolated_imports, where):
  _task_module(tmp_path, "user_tasks_t5x")
  monkeypatch.chdir(tmp_path)
  binding = "MIXTURE_OR_TASK_MODULE = 'user_tasks_t5x'"
  (tmp_path / "run.gin").write_text((binding if where == "gin file" else "") + "\n")
  gin_utils.parse_config([str(tmp_path / "run.gin")],
                         [binding] if where == "command line" else [], [])
  assert "user_tasks_t5x" in seqio.TaskRegistry.names()


def test_t5x_module_macro_must_name_a_module(tmp_path, isolated_imports):
  (tmp_path / "run.gin").write_text("MIXTURE_OR_TASK_MODULE = 3\n")
  with pytest.raises(ConfigError, match="MIXTURE_OR_TASK_MODULE = 3: expected a module name"):
    gin_utils.parse_config([str(tmp_path / "run.gin")], [], [])


def test_tasks_list_and_show_load_user_modules(tmp_path, monkeypatch, isolated_imports):
  _task_module(tmp_path, "user_tasks_listed")
  (tmp_path / "run.gin").write_text("import user_tasks_listed\n")
  monkeypatch.chdir(tmp_path)
  out = io.StringIO()
  assert tasks_command.main(["list", "--gin_file=run.gin", "--kind=seqio", "--json"], out) == 0
  listed = {e["name"]: e for e in json.loads(out.getvalue())}
  assert listed["user_tasks_listed"]["evaluation"] == "generation"
  assert listed["user_tasks_listed"]["splits"] == ["validation"]
  with pytest.raises(UserError, match="unknown task or mixture 'user_tasks_listd'; similar: "
                                        "user_tasks_listed"):
    tasks_command.main(["show", "user_tasks_listd"], io.StringIO())


def test_tasks_show_reads_the_template_task(isolated_imports):
  out = io.StringIO()
  assert tasks_command.main(["show", "my_toy_nli_validation", f"--module={TEMPLATE}",
                             "--split=validation", "--vocab=builtin", "-n", "1"], out) == 0
  text = out.getvalue()
  assert "inputs_pretokenized: 'toy_nli premise: A boy kicks a ball in the street. " in text
  assert "decoded: 'entailment'" in text


def test_a_task_without_metric_fns_is_scored_by_exact_match_accuracy(isolated_imports, caplog):
  _ = isolated_imports
  seqio.TaskRegistry.add("user_tasks_nometric",
                         source=seqio.TextLineDataSource({"validation": "/dev/null"}),
                         preprocessors=[], output_features={})
  task = seqio.get_mixture_or_task("user_tasks_nometric")
  records = [{"target": "yes", "prediction": "yes"}, {"target": "no", "prediction": "yes"}]
  assert examples.seqio_task_metrics(task, records) == {"accuracy": 50.0}
  assert "user_tasks_nometric has no metric_fns: scoring it by exact-match accuracy" in caplog.text


def test_study_stages_get_the_spec_task_modules(tmp_path):
  spec = spec_lib.StudySpec(
      name="s", model_size="tiny", initial_checkpoint=str(tmp_path / "ckpt"),
      conditions=("none", "my_toy_nli_mix"), targets=("xnli",), output_dir=str(tmp_path),
      task_modules=spec_lib.module_paths(("my_tasks.py", "pkg.tasks")))
  assert spec.task_modules == (os.path.abspath("my_tasks.py"), "pkg.tasks")
  stages = grid.build_stages(spec)
  assert stages and all(s.modules == spec.task_modules for s in stages)
  argv = runner.stage_argv(stages[-1], ("xltransfer",))
  assert f"--module={os.path.abspath('my_tasks.py')}" in argv and "--module=pkg.tasks" in argv
  # Written to and read back from the study file.
  assert grid.Stage.from_dict(stages[-1].to_dict()) == stages[-1]


def test_the_template_task_is_evaluated_with_its_metric(tiny_checkpoint, tmp_path,
                                                        isolated_imports):
  out = tmp_path / "out"
  assert cli.main(["eval", f"--module={TEMPLATE}", "--gin_file=models/mt5_tiny.gin",
                   f"--checkpoint={tiny_checkpoint}", f"--output_dir={out}",
                   "--tasks=my_toy_nli_validation", "--split=validation",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 6}",
                   "--gin.BATCH_SIZE=2"]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics["tasks"]) == {"my_toy_nli"}
  assert set(metrics["tasks"]["my_toy_nli"]["en"]) == {"accuracy"}
  records = (out / "predictions" / "my_toy_nli" / "en.jsonl").read_text().splitlines()
  assert [json.loads(r)["target"] for r in records][:2] == ["entailment", "contradiction"]


@pytest.mark.parametrize("command", ["train", "eval", "plan"])
def test_every_command_reports_a_missing_module_in_one_line(command, capsys, isolated_imports):
  assert cli.main([command, "--module=user_tasks_typo", "--gin_file=models/mt5_tiny.gin"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"xltransfer {command}: error: --module=user_tasks_typo: no module "
                            "named 'user_tasks_typo'")
