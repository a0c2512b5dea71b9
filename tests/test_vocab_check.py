"""The start-of-run check that every task's vocabulary fits the model's embedding rows, in the
library and through `xltransfer train`, `eval` and `plan` (each fails before any work)."""
import functools

import pytest
import seqio
import tensorflow as tf

import xltransfer.tasks  # pylint: disable=unused-import  (registers every xlt_ task)
from xltransfer import cli
from xltransfer.data import span_corruption, vocab, vocab_check
from xltransfer.errors import ConfigError
from xltransfer.model.config import MT5_VOCAB_SIZE, get_config
from xltransfer.model.models import EncoderDecoderModel

pytestmark = pytest.mark.usefixtures("clean_gin")

SPAN_TASK = "xlt_span_mc4_af"
SPAN_MIXTURE = "xlt_inter_all9_plus_span_lowres"
TINY = ["--gin_file=models/mt5_tiny.gin"]
MT5_TASKS = ["--gin.xltransfer.data.vocab.task_vocabulary_spec.spec='mt5'"]


@pytest.fixture(autouse=True)
def task_vocabulary_from_gin():
  """The registered tasks' vocabulary follows gin (no override left by other tests)."""
  vocab.use_task_vocabulary(None)
  yield
  vocab.use_task_vocabulary(None)


def _model(size="tiny", **overrides):
  return EncoderDecoderModel(get_config(size, **overrides))


def test_fitting_vocabularies_pass():
  vocab.use_task_vocabulary("builtin")
  vocab_check.check_model_vocabulary(_model(), SPAN_MIXTURE, "xlt_xnli_zeroshot")  # 1024 rows
  vocab.use_task_vocabulary("mt5")
  # 250100 ids (no download needed to know it) in mT5's 250112 rows.
  vocab_check.check_model_vocabulary(_model("small"), SPAN_MIXTURE)
  assert get_config("small").vocab_size == MT5_VOCAB_SIZE


def test_a_task_vocabulary_larger_than_the_embedding_names_task_sizes_and_bindings():
  vocab.use_task_vocabulary("mt5")
  with pytest.raises(ConfigError) as error:
    vocab_check.check_model_vocabulary(_model(), SPAN_TASK)
  message = str(error.value)
  for needle in (f"task {SPAN_TASK}", "250100 ids", "1024 embedding rows",
                 "sentinels <extra_id_99>..<extra_id_0> are ids 250000..250099",
                 "xltransfer.data.vocab.task_vocabulary_spec.spec",
                 "xltransfer.model.mt5_config.overrides = {'vocab_size': 250112}",
                 "the task vocabulary 'mt5'"):
    assert needle in message, (needle, message)


def test_mixtures_are_checked_task_by_task():
  vocab.use_task_vocabulary("builtin")
  with pytest.raises(ConfigError, match=rf"\(in mixture {SPAN_MIXTURE}\).* 1024 ids, but the "
                                        r"model has 512 embedding rows"):
    vocab_check.check_model_vocabulary(_model(vocab_size=512), SPAN_MIXTURE)


@pytest.fixture
def old_mt5_task():
  """A task with the vocabulary the code used to build for mt5: the released model + 100 more."""
  name = "xlt_test_vocab_check_old_mt5"
  features = {k: seqio.Feature(seqio.SentencePieceVocabulary(vocab.MT5_MODEL_PATH, extra_ids=100))
              for k in ("inputs", "targets")}
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files: tf.data.Dataset.from_tensors({"targets": "x"}), ["train"])
  seqio.TaskRegistry.add(name, source=source, output_features=features, preprocessors=[
      functools.partial(span_corruption.span_corruption)])
  yield name
  seqio.TaskRegistry.remove(name)


def test_the_released_model_with_100_more_ids_does_not_fit_mt5(old_mt5_task):
  with pytest.raises(ConfigError, match=r"250200 ids, but the model has 250112 embedding rows.*"
                                        r"are ids 250100..250199"):
    vocab_check.check_model_vocabulary(_model("small"), old_mt5_task)


def test_sources_and_unregistered_names():
  class Dataset:
    mixture_or_task_name = "b"

  class Evaluator:
    tasks = [type("EvalTask", (), {"name": "c"})()]

  assert vocab_check.task_names("a, b", None, Dataset(), Evaluator(), ["a", "d"]) == [
      "a", "b", "c", "d"]
  # Left to the callers' registration checks (plan compiles with a placeholder name).
  vocab_check.check_model_vocabulary(_model(vocab_size=8), "xltransfer_plan_placeholder")


# ---- through the commands: each stops with exit status 2 before any work ----

def _command(capsys, *argv):
  code = cli.main(list(argv))
  return code, capsys.readouterr().err


def test_train_stops_before_building_the_trainer(capsys, tmp_path):
  code, err = _command(capsys, "train", *TINY, "--gin_file=runs/finetune.gin", *MT5_TASKS,
                       f"--gin.MODEL_DIR='{tmp_path}'", f"--gin.MIXTURE_OR_TASK_NAME='{SPAN_TASK}'",
                       "--gin.TRAIN_STEPS=1", "--gin.INITIAL_CHECKPOINT_PATH=None")
  assert code == 2
  assert f"task {SPAN_TASK}" in err and "250100 ids" in err and "1024 embedding rows" in err
  assert not list(tmp_path.glob("checkpoint_*"))


def test_eval_stops_before_loading_the_checkpoint(capsys, tmp_path):
  code, err = _command(capsys, "eval", *TINY, *MT5_TASKS, "--tasks", "xlt_xnli_zeroshot",
                       "--checkpoint", str(tmp_path / "no_such_checkpoint"),
                       "--output_dir", str(tmp_path / "out"))
  assert code == 2
  # The mixture's eval tasks are checked, each named.
  assert "task xlt_xnli_eval_" in err and "250100 ids" in err and "1024 embedding rows" in err
  assert "no such file" not in err  # the vocabulary is checked first


def test_plan_stops_before_compiling(capsys):
  code, err = _command(capsys, "plan", *TINY, "--gin_file=runs/finetune.gin", *MT5_TASKS,
                       f"--gin.MIXTURE_OR_TASK_NAME='{SPAN_TASK}'", "--skip_inference")
  assert code == 2
  assert f"task {SPAN_TASK}" in err and "250100 ids" in err and "1024 embedding rows" in err


def test_plan_with_a_fitting_vocabulary_is_not_stopped_by_the_check():
  # The same check on the bindings plan reads, with the tiny model's own builtin vocabulary.
  from xltransfer.planning import run_config  # pylint: disable=import-outside-toplevel
  run_config.parse(["models/mt5_tiny.gin", "runs/finetune.gin"],
                   [f"MIXTURE_OR_TASK_NAME = '{SPAN_TASK}'"], [])
  run = run_config.load(["models/mt5_tiny.gin", "runs/finetune.gin"])
  vocab_check.check_gin_train_datasets(run.model)
  assert vocab.vocabulary_size(vocab.task_vocabulary()) == run.model.config.vocab_size == 1024


# ---- a vocabulary file that cannot be read: one line naming it, before any work ----

@pytest.fixture
def released_vocabulary_unreadable(tmp_path, monkeypatch):
  """The released mT5 vocabulary as it is offline: its file cannot be opened (a missing local
  path stands for gs://t5-data without a network, so the test needs none)."""
  missing = str(tmp_path / "mc4.250000.100extra" / "sentencepiece.model")
  monkeypatch.setattr(vocab, "MT5_MODEL_PATH", missing)
  vocab.get_vocabulary.cache_clear()  # It caches "mt5" with the path of its first call.
  vocab.use_task_vocabulary("mt5")
  yield missing
  monkeypatch.undo()
  vocab.get_vocabulary.cache_clear()
  vocab.use_task_vocabulary(None)


def test_reading_the_files_is_asked_for_by_runs_that_tokenize(released_vocabulary_unreadable):
  # Sizing needs no file (plan offline), so only read_files finds the unreadable one.
  vocab_check.check_model_vocabulary(_model("small"), SPAN_TASK)
  with pytest.raises(ConfigError) as raised:
    vocab_check.check_model_vocabulary(_model("small"), SPAN_TASK, read_files=True)
  message = str(raised.value)
  assert released_vocabulary_unreadable in message and "XLTRANSFER_VOCAB=builtin" in message
  assert "\n" not in message


@pytest.fixture
def task_with_a_missing_vocabulary_file(tmp_path):
  name = "xlt_test_vocab_check_missing_file"
  path = str(tmp_path / "gone.model")
  features = {k: seqio.Feature(seqio.SentencePieceVocabulary(path)) for k in ("inputs", "targets")}
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files: tf.data.Dataset.from_tensors({"targets": "x"}), ["train"])
  seqio.TaskRegistry.add(name, source=source, output_features=features, preprocessors=[])
  yield name, path
  seqio.TaskRegistry.remove(name)


def test_a_user_vocabulary_file_that_cannot_be_read_names_the_task_and_file(
    task_with_a_missing_vocabulary_file):
  name, path = task_with_a_missing_vocabulary_file
  for read_files in (False, True):  # Sizing a user's vocabulary reads it already.
    with pytest.raises(ConfigError, match=f"^task {name}: cannot read its 'inputs' vocabulary "
                                          f"{path} "):
      vocab_check.check_model_vocabulary(_model(), name, read_files=read_files)


def test_train_offline_with_the_released_vocabulary_stops_with_one_line(
    capsys, tmp_path, released_vocabulary_unreadable):
  # Before: the read failed inside the tf.data pipeline, after the model was built, and the
  # message came wrapped in 20 lines of TensorFlow's autograph trace ("in user code: ...").
  code, err = _command(capsys, "train", *TINY, "--gin_file=runs/finetune.gin", *MT5_TASKS,
                       "--gin.xltransfer.model.mt5_config.overrides={'vocab_size': 250112}",
                       f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                       f"--gin.MIXTURE_OR_TASK_NAME='{SPAN_TASK}'", "--gin.TRAIN_STEPS=1",
                       "--gin.INITIAL_CHECKPOINT_PATH=None")
  assert code == 2
  error_lines = [line for line in err.splitlines() if line.startswith("xltransfer train: error:")]
  assert len(error_lines) == 1, err
  assert released_vocabulary_unreadable in error_lines[0] and "in user code" not in err
  assert not list((tmp_path / "run").glob("checkpoint_*"))
