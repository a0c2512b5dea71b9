"""Evaluation says which examples were cut at the configured lengths: inputs longer than
`task_feature_lengths["inputs"]` (seqio's append_eos_after_trim keeps only their start) and
predictions that reached the decode length without EOS. The real mT5 recipe
(google-research/multilingual-t5, `finetune_mt5_tasks.sh` and `gin/sequence_lengths/*.gin`)
fine-tunes XTREME tasks with 1024 input tokens and decodes QA answers up to 512, so a study run
at 512/128 must be able to tell how many examples those lengths cut."""
import json
import logging

import jax
import numpy as np
import pytest
import seqio

from xltransfer.data import vocab
from xltransfer.evaluation import evaluator
from xltransfer.evaluation import examples as examples_lib
from xltransfer.evaluation.eval_tasks import resolve_tasks
from xltransfer.evaluation.settings import EvalSettings
from xltransfer.model.config import get_config
from xltransfer.model.models import EncoderDecoderModel

from first_word_task import register_first_word_task

INPUT_LENGTH = 16
DECODE_LENGTH = 2
LINES = ["short one", "a much longer line with many more words than sixteen tokens can hold",
         "tiny"]


@pytest.fixture(scope="module")
def model_and_params():
  model = EncoderDecoderModel(get_config("tiny"))
  return model, model.init(jax.random.PRNGKey(3))


def _evaluate(tmp_path, model_and_params):
  data = tmp_path / "cut.txt"
  data.write_text("\n".join(LINES) + "\n", encoding="utf-8")
  register_first_word_task(str(data), "cuttest")
  model, params = model_and_params
  settings = EvalSettings(split="validation", batch_size=2,
                          task_feature_lengths={"inputs": INPUT_LENGTH, "targets": DECODE_LENGTH})
  out = tmp_path / "out"
  outcome = evaluator.Evaluator(model, resolve_tasks("xlt_cuttest_eval_en"), str(out),
                                settings, show_progress=False).run(params)
  with open(out / "predictions" / "cuttest" / "en.jsonl") as f:
    records = [json.loads(line) for line in f]
  return outcome, records, out


def _expected(model_and_params):
  """Which lines are cut and which greedy decodes have no EOS, worked out here directly."""
  model, params = model_and_params
  vocabulary = vocab.get_vocabulary("builtin")
  encoded = [vocabulary.encode(line) for line in LINES]
  cut = [len(tokens) + 1 > INPUT_LENGTH for tokens in encoded]
  rows = [tokens[:INPUT_LENGTH - 1] + [1] for tokens in encoded]
  inputs = np.asarray([row + [0] * (INPUT_LENGTH - len(row)) for row in rows], np.int32)
  decoded = np.asarray(model.greedy_decode(params, inputs, DECODE_LENGTH))
  at_limit = [1 not in row for row in decoded]
  return cut, at_limit


@pytest.mark.slow
def test_records_and_metrics_say_which_examples_were_cut(tmp_path, model_and_params, caplog):
  cut, at_limit = _expected(model_and_params)
  assert cut == [False, True, False]  # the data makes one long input
  assert any(at_limit)  # two tokens are too few for this random model to end a sentence
  caplog.set_level(logging.WARNING)
  outcome, records, out = _evaluate(tmp_path, model_and_params)
  assert [r.get("input_truncated", False) for r in records] == cut
  assert [r.get("decode_limit_reached", False) for r in records] == at_limit
  # Left out, never false, where nothing was cut.
  assert all(r.get("input_truncated", True) and r.get("decode_limit_reached", True)
             for r in records)
  counts = {"examples": 3, "inputs_truncated": 1, "decode_limit_reached": sum(at_limit)}
  assert outcome.truncated == {"cuttest": {"en": counts}}
  for name in ("metrics.json", "eval_info.json"):
    with open(out / name) as f:
      assert json.load(f)["truncated"] == {"cuttest": {"en": counts}}
  assert "xlt_cuttest_eval_en: 1 of 3 inputs were longer than 16 tokens" in caplog.text
  assert f"{sum(at_limit)} of 3 predictions stopped at the decode length (2 tokens)" in caplog.text


@pytest.mark.slow
def test_counts_come_back_from_reused_prediction_files(tmp_path, model_and_params):
  first, _, out = _evaluate(tmp_path, model_and_params)
  again, _, _ = _evaluate(tmp_path, model_and_params)  # reads the predictions file back
  assert again.truncated == first.truncated != {}


def test_input_was_truncated_counts_the_eos():
  feature = seqio.Feature(vocab.get_vocabulary("builtin"))
  text = "hello world"
  length = len(feature.vocabulary.encode(text))
  assert not examples_lib.input_was_truncated(feature, text, length + 1)  # fits with its EOS
  assert examples_lib.input_was_truncated(feature, text, length)  # EOS replaced the last token
  no_eos = seqio.Feature(feature.vocabulary, add_eos=False)
  assert not examples_lib.input_was_truncated(no_eos, text, length)


def test_truncation_counts_none_when_nothing_was_cut():
  assert examples_lib.truncation_counts([{"id": "0"}, {"id": "1"}]) is None
  assert examples_lib.truncation_counts([{"id": "0", "input_truncated": True}, {"id": "1"}]) == {
      "examples": 2, "inputs_truncated": 1, "decode_limit_reached": 0}
