"""The upstream-T5X gin files (gin/t5x/) parse, and every task and mixture they name exists.

T5X is not installed here, so the files are read with gin's own parser without resolving
T5X's configurables: includes of our own files are followed, T5X's are recorded. The model
vocabulary they bind is compared with the tasks' as T5X compares them before running.
"""
import glob
import os

import gin
import pytest
import seqio
from gin import config_parser

import sentinel_models
import xltransfer.tasks  # pylint: disable=unused-import  (registers every xlt_ task)
from xltransfer.data import vocab

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
T5X_FILES = sorted(glob.glob(os.path.join(GIN_DIR, "t5x", "*.gin")))
TASK_ARGS = ("mixture_or_task_name",)
MODEL_VOCABULARY = "seqio.SentencePieceVocabulary."
TASK_VOCABULARY_SPEC = "vocab.task_vocabulary_spec.spec"


class _Recorder(config_parser.ParserDelegate):
  """Keeps references and macros symbolic instead of looking them up in gin's registry."""

  def configurable_reference(self, scoped_name, evaluate):
    return ("@", scoped_name, evaluate)

  def macro(self, name):
    return ("%", name)


def _read(path, seen=None):
  """(imports, T5X includes, {selector or macro: value}) with our own includes followed."""
  seen = seen or set()
  seen.add(path)
  imports, includes, bindings = [], [], {}
  with open(path) as f:
    statements = list(config_parser.ConfigParser(f, _Recorder()))
  for statement in statements:
    if isinstance(statement, config_parser.ImportStatement):
      imports.append(statement.module)
    elif isinstance(statement, config_parser.IncludeStatement):
      ours = os.path.join(GIN_DIR, statement.filename)
      if os.path.exists(ours):
        assert ours not in seen, f"{path}: include cycle through {ours}"
        more_imports, more_includes, more_bindings = _read(ours, seen)
        imports += more_imports
        includes += more_includes
        bindings.update(more_bindings)
      else:
        includes.append(statement.filename)
    elif isinstance(statement, config_parser.BindingStatement):
      key = statement.selector if not statement.arg_name else (
          f"{statement.scope + '/' if statement.scope else ''}{statement.selector}."
          f"{statement.arg_name}")
      bindings[key] = statement.value
  return imports, includes, bindings


def test_there_are_intermediate_and_finetune_files():
  names = [os.path.basename(p) for p in T5X_FILES]
  assert any("intermediate" in n for n in names) and any("finetune" in n for n in names)


@pytest.mark.parametrize("path", T5X_FILES, ids=os.path.basename)
def test_t5x_file_is_a_t5x_mt5_xxl_finetune_run(path):
  imports, includes, bindings = _read(path)
  assert "t5x/examples/t5/mt5/xxl.gin" in includes
  assert "t5x/configs/runs/finetune.gin" in includes
  assert "xltransfer.tasks" in imports
  # Mesh TensorFlow's loss normalisation, which the released mT5 checkpoints need.
  assert bindings["LOSS_NORMALIZING_FACTOR"] == 233472
  assert bindings["INITIAL_CHECKPOINT_PATH"].startswith(
      "gs://t5-data/pretrained_models/t5x/mt5_xxl/")
  assert bindings["USE_CACHED_TASKS"] is False
  # T5X counts the pretrained checkpoint's 1M steps in TRAIN_STEPS.
  assert bindings["TRAIN_STEPS"] > 1_000_000


@pytest.mark.parametrize("path", T5X_FILES, ids=os.path.basename)
def test_every_task_and_mixture_named_is_registered(path):
  _, _, bindings = _read(path)
  named = [v for k, v in bindings.items()
           if k == "MIXTURE_OR_TASK_NAME" or k.rsplit(".", 1)[-1] in TASK_ARGS]
  assert named, f"{path} names no task"
  registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  for name in named:
    if isinstance(name, tuple):  # a macro reference such as %MIXTURE_OR_TASK_NAME
      continue
    assert name in registered, f"{path}: {name!r} is not registered by xltransfer.tasks"


def _t5x_vocabularies(bindings):
  """(task inputs, task targets, model) vocabularies as T5X gets them from these bindings.

  Model: t5x/examples/t5/mt5/base.gin makes VOCABULARY = @seqio.SentencePieceVocabulary()
  for both input_vocabulary and output_vocabulary; our files bind its arguments. Tasks:
  `t5x.utils.get_vocabulary` takes the mixture's inputs and targets features. Nothing is
  loaded: seqio compares SentencePiece vocabularies by their constructor arguments.
  """
  model = seqio.SentencePieceVocabulary(**{
      key[len(MODEL_VOCABULARY):]: value for key, value in bindings.items()
      if key.startswith(MODEL_VOCABULARY)})
  gin.bind_parameter("xltransfer.data.vocab.task_vocabulary_spec.spec",
                     bindings[TASK_VOCABULARY_SPEC])
  vocab.use_task_vocabulary(None)  # Resolve again, from that binding.
  features = seqio.get_mixture_or_task(bindings["MIXTURE_OR_TASK_NAME"]).output_features
  return features["inputs"].vocabulary, features["targets"].vocabulary, model


def _t5x_vocabularies_match(inputs, targets, model) -> bool:
  # t5x.utils.verify_matching_vocabs raises unless neither differs.
  return not (inputs != model or targets != model)


@pytest.fixture
def gin_and_task_vocabulary():
  gin.clear_config()
  vocab.use_task_vocabulary(None)
  yield
  gin.clear_config()
  vocab.use_task_vocabulary(None)


@pytest.mark.parametrize("path", T5X_FILES, ids=os.path.basename)
def test_task_and_model_vocabularies_pass_t5x_check(path, gin_and_task_vocabulary):
  _, _, bindings = _read(path)
  assert bindings[TASK_VOCABULARY_SPEC] == "mt5"
  assert bindings[MODEL_VOCABULARY + "sentencepiece_model_file"] == vocab.MT5_MODEL_PATH
  inputs, targets, model = _t5x_vocabularies(bindings)
  assert model.extra_ids == 0
  assert _t5x_vocabularies_match(inputs, targets, model)
  # What xltransfer used to build for "mt5" (100 more extra ids) is what T5X refused.
  old = seqio.SentencePieceVocabulary(vocab.MT5_MODEL_PATH, extra_ids=100)
  assert not _t5x_vocabularies_match(old, old, model)


@pytest.mark.parametrize("layout, match", [("released", True), ("none", False)])
def test_t5x_check_with_a_local_model_in_place_of_the_released_one(
    tmp_path, gin_and_task_vocabulary, layout, match):
  """The same bindings with the model file overridden by a local stand-in on both sides: one
  with the released model's own sentinels matches (extra_ids=0 on both sides), and one
  without them, which xltransfer gives 100 extra ids, does not."""
  _, _, bindings = _read(T5X_FILES[0])
  path = sentinel_models.write_model(tmp_path, f"stand_in_{layout}", layout)
  bindings = dict(bindings, **{MODEL_VOCABULARY + "sentencepiece_model_file": path,
                               TASK_VOCABULARY_SPEC: path})
  inputs, targets, model = _t5x_vocabularies(bindings)
  assert _t5x_vocabularies_match(inputs, targets, model) is match
  if match:
    assert inputs.vocab_size == model.vocab_size == 60 + sentinel_models.SENTINELS
