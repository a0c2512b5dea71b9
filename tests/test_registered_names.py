"""A mistyped task name is reported before TensorFlow loads: the names `import xltransfer.tasks`
registers are remembered between runs (xltransfer/registered_names.py) while the code that
registers them is unchanged."""
import os
import subprocess
import sys
import textwrap

import pytest
import seqio

from xltransfer import registered_names
from xltransfer.errors import ConfigError


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(registered_names.CACHE_ENV, str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_nothing_remembered_means_unsure(cache_dir):
  assert registered_names.unknown(["xlt_xnli_train"]) is None
  registered_names.check(["anything"], "MIXTURE_OR_TASK_NAME")  # the slow path decides


def test_remembered_names_tell_unknown_ones_with_suggestions(cache_dir):
  registered_names.remember(["xlt_xnli_train", "xlt_xnli_zeroshot"])
  assert (cache_dir / registered_names.CACHE_FILE).is_file()
  assert registered_names.unknown(["xlt_xnli_train", "xlt_xnli_trian"]) == ["xlt_xnli_trian"]
  with pytest.raises(ConfigError, match=r"MIXTURE_OR_TASK_NAME 'xlt_xnli_trian' is not a "
                                        r"registered seqio task or mixture; did you mean "
                                        r"xlt_xnli_train\b"):
    registered_names.check(["xlt_xnli_trian"], "MIXTURE_OR_TASK_NAME")
  registered_names.check(["xlt_xnli_zeroshot"], "MIXTURE_OR_TASK_NAME")


def test_a_users_seqio_task_counts_as_registered(cache_dir):
  registered_names.remember(["xlt_xnli_train"])
  seqio.TaskRegistry.add("user_registered_name", source=seqio.TextLineDataSource(
      {"validation": "/dev/null"}), preprocessors=[], output_features={})
  try:
    assert registered_names.unknown(["user_registered_name"]) == []
  finally:
    seqio.TaskRegistry.remove("user_registered_name")


def test_changed_code_forgets_the_names(cache_dir, monkeypatch):
  registered_names.remember(["xlt_xnli_train"])
  with monkeypatch.context() as patched:
    patched.setattr(registered_names, "fingerprint", lambda: "another version")
    assert registered_names.remembered() is None
  assert registered_names.remembered() == {"xlt_xnli_train"}
  (cache_dir / registered_names.CACHE_FILE).write_text("{not json")
  assert registered_names.remembered() is None


def test_an_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("")
  monkeypatch.setenv(registered_names.CACHE_ENV, str(blocker / "cache"))  # under a file
  registered_names.remember(["xlt_xnli_train"])
  assert registered_names.remembered() is None


@pytest.mark.slow
def test_importing_the_tasks_remembers_them_all(cache_dir):
  """In a fresh process (this one has imported them already)."""
  env = dict(os.environ, **{registered_names.CACHE_ENV: str(cache_dir)})
  proc = subprocess.run([sys.executable, "-c", "import xltransfer.tasks"], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  remembered = registered_names.remembered()
  assert {"xlt_xnli_train", "xlt_xnli_eval_sw", "xlt_inter_all9", "xlt_span_sample_en"} <= (
      remembered)
  assert len(remembered) > 500 and all(name.startswith("xlt_") for name in remembered)


def test_train_reports_a_mistyped_name_without_importing_tensorflow(cache_dir, tmp_path):
  """With the names remembered, the check runs in a process where TensorFlow and seqio cannot
  be imported at all."""
  registered_names.remember(["xlt_xnli_train"])
  script = textwrap.dedent(f"""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
          if name.split(".")[0] in ("tensorflow", "seqio", "tensorflow_datasets"):
            raise ImportError("blocked: " + name)
      sys.meta_path.insert(0, Block())
      from xltransfer import cli
      sys.exit(cli.main(["train", "--gin_file=models/mt5_tiny.gin",
                         "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='{tmp_path}/run'",
                         "--gin.MIXTURE_OR_TASK_NAME='xlt_xnli_trian'",
                         "--gin.TRAIN_STEPS=1", "--gin.INITIAL_CHECKPOINT_PATH=None"]))
  """)
  env = dict(os.environ, **{registered_names.CACHE_ENV: str(cache_dir)}, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert ("MIXTURE_OR_TASK_NAME 'xlt_xnli_trian' is not a registered seqio task or mixture; "
          "did you mean xlt_xnli_train?") in proc.stderr


def test_a_new_sample_text_changes_the_fingerprint(monkeypatch, tmp_path):
  """The bundled sample texts decide which xlt_span_sample_* tasks exist: a new one must make
  the remembered names stale, not make its task look unregistered."""
  package = tmp_path / "xltransfer"
  (package / "assets" / "sample_text").mkdir(parents=True)
  (package / "module.py").write_text("")
  monkeypatch.setattr(registered_names, "_source_dirs", lambda: [str(package)])
  before = registered_names.fingerprint()
  (package / "assets" / "sample_text" / "yo.txt").write_text("a text\n")
  assert registered_names.fingerprint() != before
